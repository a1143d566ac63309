"""The task `kaip-huggingface` serves a model folder for: `--task`, else inferred from the config's `architectures`
as KServe's huggingfaceserver infers it (the first suffix of its table that the architecture ends with).

Kaip's additions to upstream's inference: a sentence-transformers folder (`modules.json`) and a bare encoder
(`BertModel`: no head) are embedding models, where upstream asks for `--task`; GPT-2-style `…LMHeadModel` and a
config without `architectures` stay text generation, as the runtime served them before it had other tasks."""

from __future__ import annotations

import json
from pathlib import Path

TEXT_GENERATION = "text_generation"
TEXT_EMBEDDING = "text_embedding"
SEQUENCE_CLASSIFICATION = "sequence_classification"
TOKEN_CLASSIFICATION = "token_classification"
FILL_MASK = "fill_mask"
ENCODER_TASKS = (TEXT_EMBEDDING, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, FILL_MASK)
SUPPORTED_TASKS = (TEXT_GENERATION, *ENCODER_TASKS)
# Upstream's other task names: known, so that refusing one says it is not served here rather than unknown.
UPSTREAM_ONLY = ("text2text_generation", "question_answering", "table_question_answering", "multiple_choice",
                 "time_series_forecast")

# KServe's ARCHITECTURES_2_TASK, in its order, then Kaip's GPT-2-style names.
ARCHITECTURE_SUFFIXES = (
    ("TapasForQuestionAnswering", "table_question_answering"),
    ("ForQuestionAnswering", "question_answering"),
    ("ForTokenClassification", TOKEN_CLASSIFICATION),
    ("ForSequenceClassification", SEQUENCE_CLASSIFICATION),
    ("ForMultipleChoice", "multiple_choice"),
    ("ForMaskedLM", FILL_MASK),
    ("ForCausalLM", TEXT_GENERATION),
    ("ForConditionalGeneration", "text2text_generation"),
    ("MTModel", "text2text_generation"),
    ("EncoderDecoderModel", "text2text_generation"),
    ("ForPrediction", "time_series_forecast"),
    ("LMHeadModel", TEXT_GENERATION),
)


class TaskError(ValueError):
    """The task cannot be served; the message says why and what to do (the replica's last log line)."""


def _supported() -> str:
    return ", ".join(SUPPORTED_TASKS)


def _loads_as_causal_lm(model_type: str | None) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def infer_task(model_dir: Path) -> str:
    """The task the folder's model was made for (may be one Kaip does not serve); TaskError when it cannot tell."""
    if (model_dir / "modules.json").is_file():
        return TEXT_EMBEDDING
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        return TEXT_GENERATION  # the loader then says what is missing, as it did before tasks
    config = json.loads(config_file.read_text())
    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    if not architectures:
        if _loads_as_causal_lm(model_type):
            return TEXT_GENERATION
        raise TaskError(f"cannot infer the task: config.json names no architectures (model_type {model_type!r}); "
                        f"set --task (one of {_supported()})")
    arch = architectures[0]
    for suffix, task in ARCHITECTURE_SUFFIXES:
        if arch.endswith(suffix):
            # Multimodal causal LMs (Gemma 3, ...) are named …ForConditionalGeneration too.
            if task == "text2text_generation" and _loads_as_causal_lm(model_type):
                return TEXT_GENERATION
            return task
    if arch.endswith("Model"):
        return TEXT_EMBEDDING
    raise TaskError(f"cannot infer the task from architecture {arch}; set --task (one of {_supported()})")


def resolve_task(model_dir: Path, requested: str | None) -> tuple[str, str | None]:
    """(task, warning): `requested` when given (checked), else the inferred task. The warning, as upstream's,
    notes a requested task that differs from the architecture's."""
    if requested:
        task = requested.strip().lower().replace("-", "_")
        if task in UPSTREAM_ONLY:
            raise TaskError(f"--task {task} is not served by kaip-huggingface (supported: {_supported()})")
        if task not in SUPPORTED_TASKS:
            raise TaskError(f"unsupported --task {requested!r}: supported tasks are {_supported()}")
        try:
            inferred: str | None = infer_task(model_dir)
        except (TaskError, ValueError, OSError):
            inferred = None
        warning = (f"the architecture suggests the task {inferred}, but --task is {task}"
                   if inferred and inferred != task else None)
        return task, warning
    task = infer_task(model_dir)
    if task not in SUPPORTED_TASKS:
        raise TaskError(f"the model's architecture is for {task}, which kaip-huggingface does not serve; "
                        f"set --task (one of {_supported()})")
    return task, None
