"""The chatbot's training pipeline (Kubeflow Pipelines, compiled by the real `kfp` SDK).

prepare data → fine-tune SmolLM2-135M-Instruct with the built-in `kaip-lora-sft` runtime (a TrainJob through the
team's LocalQueue) → evaluate the result and the current champion on the held-out set → register the candidate
with its lineage → promote it to the `candidate` alias only if it beats the champion.

Each step talks to Kaip only through its public HTTP API, as the pipeline's service account (`pipeline-runner`,
whose token the platform gives every task pod, as Kubernetes does): the Kubernetes-style REST API for the TrainJob,
the MLflow protocol (the real `mlflow` client) for runs and the registry. Relative file parameters are resolved
against the directory the platform was started in (`KAIP_WORKSPACE`), as KnowledgeBase sources are.

Compile: `python -m kfp.cli.compile`… or simply `kaip run -f pipeline.py`; `make demo` compiles it into
`manifests/60-pipeline.yaml`'s Pipeline.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

# On a cluster: an image with the `kaip` package installed. The local executor runs the project's environment.
IMAGE = "python:3.11"


@dsl.component(base_image=IMAGE)
def prepare_data(train_file: str, eval_file: str, train: Output[Dataset], evaluation: Output[Dataset]):
    """Check every line of both files (a bad one fails the run naming file and line) and keep them, with their
    digests, as the run's datasets."""
    import hashlib
    import os
    import shutil
    from pathlib import Path

    from kaip.evaluation.qa import load_eval_set
    from kaip.training.lora_sft import load_chat_jsonl

    root = Path(os.environ.get("KAIP_WORKSPACE", "."))
    for name, out, count in ((train_file, train, lambda p: len(load_chat_jsonl(p))),
                             (eval_file, evaluation, lambda p: len(load_eval_set(p)))):
        src = root / name
        rows = count(src)
        shutil.copyfile(src, out.path)
        out.metadata.update(source=str(name), rows=rows, sha256=hashlib.sha256(src.read_bytes()).hexdigest())
        print(f"{name}: {rows} rows")


@dsl.component(base_image=IMAGE)
def fine_tune(train: Input[Dataset], base_model: str, queue: str, experiment: str, max_steps: int,
              learning_rate: float, batch_size: int, lora_r: int, max_seq_length: int, cpu: str) -> str:
    """Run `kaip-lora-sft` as a TrainJob in the team's LocalQueue and wait for it; returns its MLflow run id."""
    import hashlib
    import os
    import time

    import httpx

    ns = os.environ["KAIP_NAMESPACE"]
    api = httpx.Client(base_url=os.environ["KAIP_SERVER"], timeout=30,
                       headers={"Authorization": f"Bearer {os.environ['KAIP_TOKEN']}"})
    pod = api.get(f"/api/v1/namespaces/{ns}/pods/{os.environ['KAIP_POD_NAME']}").json()
    run = pod["metadata"]["labels"].get("pipelines.kaip.dev/run", "")
    name = f"chatbot-sft-{hashlib.sha256(os.environ['KAIP_POD_NAME'].encode()).hexdigest()[:10]}"
    job = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
           "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": queue,
                                                 "kaip.dev/experiment": experiment,
                                                 "pipelines.kaip.dev/run": run}},
           "spec": {"runtimeRef": {"name": "kaip-lora-sft"},
                    # a TrainJob's storageUri is `scheme://...` (upstream's rule): models:/N@A is written models://N@A
                    "initializer": {"dataset": {"storageUri": "file://" + os.path.abspath(train.path)},
                                    "model": {"storageUri": "models://" + base_model.removeprefix("models:/")
                                              if base_model.startswith("models:/") and "://" not in base_model
                                              else base_model}},
                    "trainer": {"numNodes": 1, "numProcPerNode": 1,
                                "resourcesPerNode": {"requests": {"cpu": cpu, "memory": "6Gi"}},
                                "args": ["--max-steps", str(max_steps), "--learning-rate", str(learning_rate),
                                         "--batch-size", str(batch_size), "--lora-r", str(lora_r),
                                         "--lora-alpha", str(2 * lora_r), "--target-modules",
                                         "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "--max-seq-length",
                                         str(max_seq_length),
                                         "--eval-split", "0.05", "--warmup-steps", str(max(1, max_steps // 10)),
                                         "--group-by-length", "--save-steps", "20"]}}}
    r = api.post(f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs", json=job)
    if r.status_code not in (201, 409):  # 409: a retry of this task finds the job it created
        raise RuntimeError(f"creating TrainJob {name}: {r.status_code} {r.text}")
    print(f"TrainJob {name} in LocalQueue {queue}", flush=True)
    shown = None
    while True:
        status = api.get(f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs/{name}").json().get(
            "status") or {}
        conds = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
        metrics = {m["name"]: m["value"] for m in (status.get("trainerStatus") or {}).get("metrics") or []}
        line = f"step {metrics.get('step', 0)}/{metrics.get('total_steps', max_steps)} loss {metrics.get('loss', '-')}"
        if line != shown:
            print(line, flush=True)
            shown = line
        if "Failed" in conds:
            raise RuntimeError(f"TrainJob {name} failed: {conds['Failed'].get('message')}")
        published = (status.get("kaip") or {}).get("published") or {}
        if "Complete" in conds and published:
            if "runId" not in published:
                raise RuntimeError(f"TrainJob {name}: recording the run failed: {published.get('error')}")
            print(f"run {published['runId']}", flush=True)
            return published["runId"]
        time.sleep(2)


@dsl.component(base_image=IMAGE)
def evaluate(run_id: str, evaluation: Input[Dataset], model_name: str, base_model: str, limit: int,
             max_new_tokens: int, metrics: Output[Metrics]) -> NamedTuple(
        "Outputs", [("wins", bool), ("candidate_score", float), ("champion_score", float), ("champion", str),
                    ("reason", str)]):
    """Answer the held-out questions with the fine-tuned model and with the champion (the registered model's
    `champion` alias, else the base model); score exact facts, ROUGE-L and refusals; decide who wins."""
    import json
    import tempfile
    from collections import namedtuple

    import mlflow
    from mlflow import MlflowClient

    from kaip.evaluation.qa import SYSTEM_PROMPT, compare, generate_answers, load_eval_set
    from kaip.evaluation.qa import evaluate as score

    items = load_eval_set(evaluation.path)
    items = items[:limit] if limit > 0 else items
    client = MlflowClient()
    try:
        champion = f"models:/{model_name}/{client.get_model_version_by_alias(model_name, 'champion').version}"
    except mlflow.exceptions.MlflowException:
        champion = base_model
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, uri in (("candidate", f"runs:/{run_id}/merged"), ("champion", champion)):
            folder = mlflow.artifacts.download_artifacts(uri, dst_path=f"{tmp}/{label}")
            answers = generate_answers(folder, items, system_prompt=SYSTEM_PROMPT, max_new_tokens=max_new_tokens)
            reports[label] = score(answers, items)
            print(label, uri, json.dumps({k: v for k, v in reports[label].items() if k != "items"}), flush=True)
    wins, reason = compare(reports["candidate"], reports["champion"])
    print(reason, flush=True)
    for label, report in reports.items():
        for key in ("score", "facts", "rouge_l", "refusal_accuracy"):
            metrics.log_metric(f"{label}_{key}", float(report[key]))
            client.log_metric(run_id, f"eval_{label}_{key}", float(report[key]))
    client.set_tag(run_id, "kaip.eval.champion", champion)
    Outputs = namedtuple("Outputs", ["wins", "candidate_score", "champion_score", "champion", "reason"])
    return Outputs(wins, float(reports["candidate"]["score"]), float(reports["champion"]["score"]), champion, reason)


@dsl.component(base_image=IMAGE)
def register(run_id: str, model_name: str, base_model: str, train: Input[Dataset], evaluation: Input[Dataset],
             candidate_score: float, champion_score: float, champion: str) -> str:
    """A model version from the run's merged weights, tagged with its lineage: datasets (digests), base model,
    the pipeline run, and the evaluation against the champion."""
    import os

    import httpx
    import mlflow

    ns = os.environ["KAIP_NAMESPACE"]
    pod = httpx.get(f"{os.environ['KAIP_SERVER']}/api/v1/namespaces/{ns}/pods/{os.environ['KAIP_POD_NAME']}",
                    headers={"Authorization": f"Bearer {os.environ['KAIP_TOKEN']}"}).json()
    tags = {"kaip.pipeline_run": f"{ns}/{pod['metadata']['labels'].get('pipelines.kaip.dev/run', '')}",
            "kaip.base_model": base_model, "kaip.dataset.train.sha256": train.metadata["sha256"],
            "kaip.dataset.eval.sha256": evaluation.metadata["sha256"], "eval.score": f"{candidate_score:.4f}",
            "eval.champion": champion, "eval.champion_score": f"{champion_score:.4f}"}
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(model_name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(model_name)
    source = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/merged"
    version = client.create_model_version(model_name, source, run_id=run_id, tags=tags)
    print(f"registered models:/{model_name}/{version.version}", flush=True)
    return str(version.version)


@dsl.component(base_image=IMAGE)
def promote(model_name: str, version: str, alias: str):
    """Point the alias (`candidate`: the next canary) at the version."""
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(model_name, alias, version)
    print(f"models:/{model_name}@{alias} -> version {version}", flush=True)


@dsl.pipeline(name="healthcare-chatbot-training",
              description="Fine-tune, evaluate against the champion, register, promote the winner to candidate")
def training(train_file: str = "examples/healthcare-chatbot/data/train.jsonl",
             eval_file: str = "examples/healthcare-chatbot/data/eval.jsonl",
             base_model: str = "models:/smollm2-135m-instruct@base", model_name: str = "healthcare-chatbot",
             queue: str = "genai", max_steps: int = 120, learning_rate: float = 2e-3, batch_size: int = 4,
             lora_r: int = 16, max_seq_length: int = 384, cpu: str = "2", eval_limit: int = 0,
             max_new_tokens: int = 64):
    data = prepare_data(train_file=train_file, eval_file=eval_file)
    tuned = fine_tune(train=data.outputs["train"], base_model=base_model, queue=queue, experiment=model_name,
                      max_steps=max_steps, learning_rate=learning_rate, batch_size=batch_size, lora_r=lora_r,
                      max_seq_length=max_seq_length, cpu=cpu)
    judged = evaluate(run_id=tuned.output, evaluation=data.outputs["evaluation"], model_name=model_name,
                      base_model=base_model, limit=eval_limit, max_new_tokens=max_new_tokens)
    # The registry and the champion change between runs: these steps are never served from the cache.
    judged.set_caching_options(False)
    registered = register(run_id=tuned.output, model_name=model_name, base_model=base_model,
                          train=data.outputs["train"], evaluation=data.outputs["evaluation"],
                          candidate_score=judged.outputs["candidate_score"],
                          champion_score=judged.outputs["champion_score"], champion=judged.outputs["champion"])
    registered.set_caching_options(False)
    with dsl.If(judged.outputs["wins"] == True):  # noqa: E712 (a pipeline condition, compiled to CEL)
        promote(model_name=model_name, version=registered.output, alias="candidate").set_caching_options(False)
