"""The Kaip Python SDK: the whole model lifecycle from a notebook, over Kaip's public HTTP API.

```python
import kaip

client = kaip.Client()                                   # KAIP_SERVER / KAIP_TOKEN, or ~/.kaip/credentials
job = client.fine_tune(base_model="models:/smollm2-135m-instruct@base", dataset="train.jsonl",
                       register="chatbot", queue="genai").wait()
bot = client.deploy(job.model_version, name="chatbot")
bot.chat("What does my plan cover?")
```

Errors are typed (`kaip.NotFound`, `kaip.Invalid` with the refused field paths, `PermissionError` subclasses for
401/403); `kaip.autolog()` records a transformers or PyTorch training loop into the current run.
"""

from kaip.sdk.aio import AsyncClient
from kaip.sdk.autolog import autolog, log_model
from kaip.sdk.client import Client
from kaip.sdk.errors import (
    AlreadyExists,
    ApiError,
    BadRequest,
    Conflict,
    Failed,
    Forbidden,
    Invalid,
    NotFound,
    ServerError,
    Unauthorized,
    Unreachable,
    WaitTimeout,
)
from kaip.sdk.knowledge import Guardrails, KnowledgeBase
from kaip.sdk.objects import Object
from kaip.sdk.pipelines import PipelineRun
from kaip.sdk.serving import Endpoint
from kaip.sdk.tracking import Model, ModelVersion, Run
from kaip.sdk.training import TrainJob

__all__ = ["AlreadyExists", "ApiError", "AsyncClient", "BadRequest", "Client", "Conflict", "Endpoint", "Failed",
           "Forbidden", "Guardrails", "Invalid", "KnowledgeBase", "Model", "ModelVersion", "NotFound", "Object",
           "PipelineRun", "Run", "ServerError", "TrainJob", "Unauthorized", "Unreachable", "WaitTimeout", "autolog",
           "log_model"]
