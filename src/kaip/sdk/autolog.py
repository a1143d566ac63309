"""`kaip.autolog()`: record a training loop's params, metrics and model into the current run, with no logging code.

    import kaip

    kaip.autolog(registered_model_name="support-bot")   # once, before training
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()        # params, every logged metric, the model as the run's `model/` artifacts, a model version

**transformers.** Every `Trainer` built while autolog is on gets a callback that logs, when training begins, the
scalar `TrainingArguments` and the model's main config fields and parameter counts (`num_parameters`,
`num_trainable_parameters`: what LoRA trains); on every log, each numeric entry (`loss`, `learning_rate`,
`grad_norm`, `epoch`, `eval_*`, ...) at the global step; when training ends, the model saved by
`trainer.save_model()` (with its tokenizer or processor) as the run's `model/` artifacts.

**Plain PyTorch.** Every `optimizer.step()` logs `lr` (of the first param group) and `loss` (the last 0-dim float
tensor that `.backward()` was called on — with gradient accumulation, the scaled loss of the last micro-batch);
the first step also logs the optimizer's class and its defaults (`lr`, `betas`, `weight_decay`, ...) as params.
Steps count the calls of the first optimizer that steps; other optimizers stepping at the same time are not
logged. Autolog cannot tell which module of a plain loop is *the* model, so log it when training is done:

    kaip.log_model(model)                    # an nn.Module: model.safetensors; transformers: save_pretrained
    kaip.log_model(hf_model, tokenizer=tok)  # registered too when autolog() was given registered_model_name

**Where the run is.** Inside a Kaip TrainJob worker (`KAIP_TRAIN_DIR` is set) workers hold no credentials, so
rank 0 writes `metrics.jsonl`, `progress.json` (the job's Progress column) and `publish.json` into the job
directory, and the TrainJob controller records the run, its model artifacts and the model version when the job
completes (`kaip.training.publish`). Anywhere else the MLflow client talks to the Kaip server
(`MLFLOW_TRACKING_URI`, else the server in your Kaip credentials; `MLFLOW_TRACKING_TOKEN`, else your Kaip token):
the active MLflow run is used and left open, or a run is started in experiment `$MLFLOW_EXPERIMENT_ID` /
`$MLFLOW_EXPERIMENT_NAME` (default `autolog`) and ended when `Trainer.train()` returns — for a plain loop, when the
process exits, when `kaip.autolog(disable=True)` is called, or when a new optimizer starts stepping after the last one
was freed (re-running a notebook's training cell gives a new run). Only rank 0 (`RANK`) records anything.

**Cost.** A hook appends to a list: points are written in batches from a background thread (every
`FLUSH_POINTS` points or `FLUSH_SECONDS` seconds) and at the end. A recording failure is logged as a warning and
never stops training. Importing `transformers.trainer` is slow, so autolog patches `Trainer` only when that module
is first imported (or at once, if it already was).
"""

from __future__ import annotations

import atexit
import enum
import functools
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import types
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FLUSH_POINTS", "FLUSH_SECONDS", "autolog", "log_model"]

log = logging.getLogger(__name__)

FLUSH_POINTS = 500
"""Buffered points that wake the background writer."""
FLUSH_SECONDS = 5.0
"""The longest a point waits in the buffer."""
DEFAULT_EXPERIMENT = "autolog"
BASE_MODEL_TAG = "kaip.base_model"  # kaip.tracking.service.BASE_MODEL_TAG (lineage: base model -> run)
# MLflow's limits (docs/tracking.md): a log-batch call, and a param value.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000
# The model config fields worth comparing across runs (transformers' PretrainedConfig attribute names).
CONFIG_FIELDS = ("model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "dtype")

# (run, key, value, step, timestamp ms); value may still be a tensor, turned into a float when written.
Point = tuple[str, str, Any, int, int]


@dataclass(frozen=True)
class _Config:
    log_models: bool
    registered_model_name: str | None


_lock = threading.RLock()
_config: _Config | None = None  # None: autolog is off
_session: _Session | None = None
_undo: list[Any] = []  # callables that restore what autolog patched, newest last
_last_loss: Any = None  # the latest loss tensor that .backward() was called on (plain loops)
_atexit_registered = False
_warned: set[str] = set()


def _warn(what: str, err: BaseException) -> None:
    key = f"{what}: {type(err).__name__}"
    if key not in _warned:  # once per kind of failure: a training loop must not drown in warnings
        _warned.add(key)
        log.warning("kaip autolog: %s failed: %s", what, err)


def _rank() -> int:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)  # a 0-dim tensor converts here, off the training thread
    except (TypeError, ValueError, RuntimeError):
        return None


def _param_value(value: Any) -> str | None:
    """A param's string, for scalars (and tuples of them, such as Adam's betas); None for anything else."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, tuple) and all(isinstance(v, int | float | bool | str) for v in value):
        return str(value)[:MAX_PARAM_VALUE]
    if isinstance(value, str | int | float | bool):
        return str(value)[:MAX_PARAM_VALUE]
    return None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- sinks: where the points go --------------------------------------------------------------------------------


class _NullSink:
    """Ranks other than 0: nothing is recorded (rank 0 records for the group)."""

    def current_run(self, kind: str, run_name: str | None = None) -> str:
        return "-"

    def log_params(self, run: str, params: dict[str, str]) -> None:
        pass

    def write_metrics(self, points: list[tuple[str, str, float, int, int]]) -> None:
        pass

    def progress(self, step: int, total: int | None, values: dict[str, float]) -> None:
        pass

    def set_base_model(self, run: str, uri: str) -> None:
        pass

    def model_dir(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix="kaip-model-"))

    def record_model(self, run: str, name: str, folder: Path, register: str | None) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def end_run(self, run: str, status: str = "FINISHED") -> None:
        pass

    def close(self) -> None:
        pass


class _JobSink(_NullSink):
    """Inside a TrainJob worker: the files `kaip.training.publish` reads when the job is Complete (rank 0 only)."""

    RUN = "trainjob"  # the job is one run

    def __init__(self, train_dir: Path) -> None:
        self.dir = train_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.params: dict[str, str] = {}
        self.final: dict[str, tuple[int, int, float]] = {}  # key -> (step, timestamp, value): the latest point
        self.outputs: dict[str, str] = {}
        self.register: str | None = None
        self.base_model = os.environ.get("KAIP_MODEL_URI") or None
        self.used = False
        self.dataset: dict[str, str] | None = None

    def current_run(self, kind: str, run_name: str | None = None) -> str:
        self.used = True
        return self.RUN

    def log_params(self, run: str, params: dict[str, str]) -> None:
        for key, value in params.items():
            self.params.setdefault(key, value)  # as in MLflow, a param keeps its first value

    def write_metrics(self, points: list[tuple[str, str, float, int, int]]) -> None:
        # The format publish.read_metrics reads; one write per batch, appended (a restarted attempt adds to it).
        with open(self.dir / "metrics.jsonl", "a") as fh:
            fh.write("".join(json.dumps({"key": k, "value": v, "step": s, "timestamp": t}) + "\n"
                             for _, k, v, s, t in points))
        for _, key, value, step, stamp in points:
            if key not in self.final or (step, stamp) >= self.final[key][:2]:
                self.final[key] = (step, stamp, value)
        self.used = True

    def progress(self, step: int, total: int | None, values: dict[str, float]) -> None:
        from kaip.training.checkpoint import report_progress

        report_progress(step, total, **values)

    def set_base_model(self, run: str, uri: str) -> None:
        self.base_model = self.base_model or uri  # the TrainJob's initializer model wins over a local path

    def model_dir(self, name: str) -> Path:
        folder = self.dir / "outputs" / name
        shutil.rmtree(folder, ignore_errors=True)  # left by an earlier attempt
        folder.mkdir(parents=True)
        return folder

    def record_model(self, run: str, name: str, folder: Path, register: str | None) -> None:
        self.used = True
        self.outputs[name] = str(folder)
        if register:
            # publish() registers `merged` if there is one, else the first output: put this one first.
            self.outputs = {name: str(folder), **{k: v for k, v in self.outputs.items() if k != name}}
            self.register = register
        self._write_publish()

    def end_run(self, run: str, status: str = "FINISHED") -> None:
        if self.used:
            self._write_publish()

    def close(self) -> None:
        if self.used:
            self._write_publish()

    def _dataset(self) -> dict[str, str] | None:
        path = os.environ.get("KAIP_DATASET_PATH")
        if self.dataset is None and path and Path(path).is_file():
            self.dataset = {"name": Path(path).name, "path": str(Path(path).resolve()),
                            "digest": _file_digest(Path(path))}
        return self.dataset

    def _write_publish(self) -> None:
        from kaip import __version__

        report: dict[str, Any] = {
            "outputs": self.outputs, "params": self.params,
            "final_metrics": {k: v for k, (_, _, v) in self.final.items() if math.isfinite(v)},
            "register": self.register if self.outputs else None,
            "code_version": f"kaip {__version__} autolog"}
        if self.base_model:
            report["base_model"] = self.base_model
        dataset = self._dataset()
        if dataset:
            report["dataset"] = dataset
        tmp = self.dir / f".publish.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, self.dir / "publish.json")  # the controller sees the old report or the new one


class _MlflowSink(_NullSink):
    """Anywhere else: the MLflow client against the Kaip server."""

    def __init__(self) -> None:
        import mlflow
        from mlflow import MlflowClient
        from mlflow.tracking._tracking_service import utils as tracking_utils

        from kaip.config import client_config

        config = None
        if not os.environ.get("MLFLOW_TRACKING_URI") and not tracking_utils.is_tracking_uri_set():
            config = client_config()
            mlflow.set_tracking_uri(config.server)
        if not os.environ.get("MLFLOW_TRACKING_TOKEN"):
            token = (config or client_config()).token
            if token:
                os.environ["MLFLOW_TRACKING_TOKEN"] = token  # the client sends it as a bearer token
        self.client = MlflowClient()
        self.owned: set[str] = set()  # runs autolog started (and so ends)
        self.logged: dict[str, set[str]] = {}  # params each run already has: MLflow refuses to change one

    def current_run(self, kind: str, run_name: str | None = None) -> str:
        import mlflow

        active = mlflow.active_run()
        if active is not None:
            return str(active.info.run_id)
        run = mlflow.start_run(experiment_id=self._experiment(), run_name=run_name or None,
                               tags={"kaip.autolog": kind})
        self.owned.add(run.info.run_id)
        self.logged[run.info.run_id] = set()
        return str(run.info.run_id)

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        if os.environ.get("MLFLOW_EXPERIMENT_ID"):  # also what mlflow.set_experiment() sets
            return os.environ["MLFLOW_EXPERIMENT_ID"]
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except MlflowException:  # made meanwhile by another process
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def log_params(self, run: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        seen = self.logged.get(run)
        if seen is None:  # a run the user started: skip the params it has (a different value would fail the batch)
            seen = self.logged[run] = set(self.client.get_run(run).data.params)
        fresh = [Param(k, v) for k, v in params.items() if k not in seen]
        for start in range(0, len(fresh), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run, params=fresh[start:start + MAX_PARAMS_PER_BATCH], synchronous=True)
        seen.update(p.key for p in fresh)

    def write_metrics(self, points: list[tuple[str, str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        by_run: dict[str, list[Metric]] = {}
        for run, key, value, step, stamp in points:
            by_run.setdefault(run, []).append(Metric(key, value, stamp, step))
        for run, metrics in by_run.items():
            for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                self.client.log_batch(run, metrics=metrics[start:start + MAX_METRICS_PER_BATCH], synchronous=True)

    def set_base_model(self, run: str, uri: str) -> None:
        self.client.set_tag(run, BASE_MODEL_TAG, uri)

    def record_model(self, run: str, name: str, folder: Path, register: str | None) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.log_artifacts(run, str(folder), artifact_path=name)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if register:
            try:
                self.client.create_registered_model(register)
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            source = f"{self.client.get_run(run).info.artifact_uri}/{name}"
            version = self.client.create_model_version(register, source, run_id=run)
            log.info("kaip autolog: registered models:/%s/%s", register, version.version)

    def end_run(self, run: str, status: str = "FINISHED") -> None:
        import mlflow

        if run not in self.owned:
            return  # the user's run: theirs to end
        self.owned.discard(run)
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run:
            mlflow.end_run(status)
        else:
            self.client.set_terminated(run, status)

    def close(self) -> None:
        for run in list(self.owned):
            self.end_run(run)


# ---- the session: buffering, and what each hook means ---------------------------------------------------------


class _Session:
    """Buffers points for one sink and writes them from a background thread; follows the plain loop's optimizer."""

    def __init__(self, sink: _NullSink) -> None:
        self.sink = sink
        self.lock = threading.Lock()  # the buffer and the pending progress report
        self.write_lock = threading.RLock()  # one writer to the sink at a time
        self.buffer: list[Point] = []
        self.progress_step: tuple[int, int | None] | None = None
        self.progress_values: dict[str, Any] = {}
        self.wake = threading.Event()
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.trainers = 0  # Trainer.train() calls in progress: the plain-loop hooks stand aside
        self.optimizer: weakref.ref[Any] | None = None
        self.run: str | None = None  # the plain loop's run
        self.step = 0

    # -- buffering --

    def add(self, run: str, key: str, value: Any, step: int) -> None:
        if value is None or isinstance(value, bool):
            return
        with self.lock:
            self.buffer.append((run, key, value, int(step), int(time.time() * 1000)))
            full = len(self.buffer) >= FLUSH_POINTS
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="kaip-autolog", daemon=True)
            self.thread.start()
        if full:
            self.wake.set()

    def set_progress(self, step: int, total: int | None, **values: Any) -> None:
        with self.lock:
            self.progress_step = (step, total)
            self.progress_values.update({k: v for k, v in values.items() if v is not None})

    def _loop(self) -> None:
        while not self.stopping:
            self.wake.wait(FLUSH_SECONDS)
            self.wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write what is buffered; failures are warned about, never raised into the training loop."""
        with self.write_lock:
            with self.lock:
                points, self.buffer = self.buffer, []
                progress, self.progress_step = self.progress_step, None
                values = dict(self.progress_values)
            rows = [(r, k, n, s, t) for r, k, v, s, t in points if (n := _number(v)) is not None]
            if rows:
                try:
                    self.sink.write_metrics(rows)
                except Exception as err:
                    _warn("writing metrics", err)
            if progress is not None:
                numbers = {k: n for k, v in values.items() if (n := _number(v)) is not None and math.isfinite(n)}
                try:
                    self.sink.progress(progress[0], progress[1], numbers)
                except Exception as err:
                    _warn("reporting progress", err)

    def close(self) -> None:
        self.stopping = True
        self.wake.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=60)
        self.flush()
        with self.write_lock:
            try:
                self.sink.close()
            except Exception as err:
                _warn("ending the run", err)

    # -- plain PyTorch --

    def optimizer_step(self, optimizer: Any) -> None:
        if self.trainers:
            return
        followed = self.optimizer() if self.optimizer is not None else None
        if followed is not None and followed is not optimizer:
            return  # only the first optimizer that steps is followed
        fresh = followed is None
        if fresh and self.optimizer is not None:
            self.end_plain_run()  # the optimizer we followed is gone: a new training loop, a new run
        run = self.sink.current_run("pytorch")
        if run != self.run:  # a new run (ours, or one the user started): count from its start
            self.run, self.step, fresh = run, 0, True
        if fresh:
            self.optimizer = weakref.ref(optimizer)
            params = {"optimizer": type(optimizer).__name__}
            params.update({k: p for k, v in (optimizer.defaults or {}).items()
                           if (p := _param_value(v)) is not None and v is not None})
            with self.write_lock:
                try:
                    self.sink.log_params(run, params)
                except Exception as err:
                    _warn("logging params", err)
        self.step += 1
        global _last_loss
        loss, _last_loss = _last_loss, None
        lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
        self.add(run, "lr", lr, self.step)
        self.add(run, "loss", loss, self.step)
        self.set_progress(self.step, None, loss=loss, learning_rate=lr)

    def end_plain_run(self) -> None:
        if self.run is None:
            return
        run, self.run, self.optimizer = self.run, None, None
        self._end(run)

    def _end(self, run: str) -> None:
        """Write what is buffered, then close the run; a failure is a warning, never the training's end."""
        self.flush()
        with self.write_lock:
            try:
                self.sink.end_run(run)
            except Exception as err:
                _warn("ending the run", err)

    # -- transformers --

    def trainer_begin(self, args: Any, state: Any, model: Any) -> str:
        self.end_plain_run()  # a plain loop's open run is not this Trainer's
        run = self.sink.current_run("transformers", getattr(args, "run_name", None))
        self.trainers += 1
        params = {k: p for k, v in args.to_dict().items() if v is not None and (p := _param_value(v)) is not None}
        params.update(_model_params(model))
        with self.write_lock:
            try:
                self.sink.log_params(run, params)
                base = os.environ.get("KAIP_MODEL_URI") or getattr(getattr(model, "config", None), "name_or_path", "")
                if base:
                    self.sink.set_base_model(run, str(base))
            except Exception as err:
                _warn("logging params", err)
        self.set_progress(int(state.global_step), int(state.max_steps or 0) or None)
        return run

    def trainer_end(self, run: str, trainer: Any, state: Any) -> None:
        try:
            config = _config
            if config is not None and config.log_models and trainer is not None:
                with self.write_lock:
                    folder = self.sink.model_dir("model")
                    try:
                        trainer.save_model(str(folder))  # every rank: FSDP and DeepSpeed gather the weights here
                        if state.is_world_process_zero:
                            self.flush()
                            self.sink.record_model(run, "model", folder, config.registered_model_name)
                    except Exception as err:
                        _warn("logging the model", err)
        finally:
            self.trainers = max(0, self.trainers - 1)
            self._end(run)

    # -- log_model --

    def log_model(self, model: Any, name: str, tokenizer: Any, register: str | None) -> None:
        run = self.sink.current_run("pytorch")  # the active run (a plain loop's, or the user's), or the job's
        with self.write_lock:
            folder = self.sink.model_dir(name)
            try:
                _save_model(model, folder, tokenizer)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        self.flush()
        with self.write_lock:
            self.sink.record_model(run, name, folder, register)


def _model_params(model: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    config = getattr(model, "config", None)
    for key in CONFIG_FIELDS:
        value = getattr(config, key, None) if config is not None else None
        if isinstance(value, list | tuple):
            value = ",".join(map(str, value))
        elif value is not None and not isinstance(value, str | int | float | bool):
            value = str(value).removeprefix("torch.")  # a torch.dtype
        if value is not None and value != "":
            out[key] = str(value)[:MAX_PARAM_VALUE]
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        total = trainable = 0
        for p in parameters():
            n = p.numel()
            total += n
            trainable += n if p.requires_grad else 0
        out.update(num_parameters=str(total), num_trainable_parameters=str(trainable))
    return out


def _save_model(model: Any, folder: Path, tokenizer: Any = None) -> None:
    import torch

    module = model
    inner = getattr(module, "module", None)  # DistributedDataParallel / DataParallel
    if isinstance(inner, torch.nn.Module):
        module = inner
    module = getattr(module, "_orig_mod", module)  # torch.compile
    if hasattr(module, "save_pretrained"):
        module.save_pretrained(str(folder))  # transformers / peft: config + safetensors weights
    elif isinstance(module, torch.nn.Module):
        from safetensors.torch import save_model

        save_model(module, str(folder / "model.safetensors"))  # handles tied (shared) weights
        (folder / "kaip-model.json").write_text(json.dumps({
            "format": "safetensors", "class": f"{type(module).__module__}.{type(module).__qualname__}",
            "parameters": sum(p.numel() for p in module.parameters())}, indent=1) + "\n")
    else:
        raise TypeError(f"log_model takes a torch.nn.Module or a model with save_pretrained(), "
                        f"not {type(model).__name__}")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))


def _get_session() -> _Session:
    global _session, _atexit_registered
    with _lock:
        if _session is None:
            if _rank() != 0:
                sink: _NullSink = _NullSink()
            elif os.environ.get("KAIP_TRAIN_DIR"):
                sink = _JobSink(Path(os.environ["KAIP_TRAIN_DIR"]))
            else:
                sink = _MlflowSink()
            _session = _Session(sink)
            if not _atexit_registered:
                # Registered after mlflow was imported, so it runs before mlflow's own exit handler ends the run.
                atexit.register(_at_exit)
                _atexit_registered = True
        return _session


def _at_exit() -> None:
    global _session
    with _lock:
        session, _session = _session, None
    if session is not None:
        session.close()


# ---- patching --------------------------------------------------------------------------------------------------


def _on_backward(tensor: Any) -> None:
    global _last_loss
    session = _session
    if _config is not None and (session is None or not session.trainers) and tensor.ndim == 0 \
            and tensor.requires_grad and tensor.is_floating_point():
        _last_loss = tensor.detach()  # converted to a float in the background: no device sync per step


def _on_optimizer_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    if _config is None:
        return
    try:
        _get_session().optimizer_step(optimizer)
    except Exception as err:
        _warn("logging a step", err)


def _patch_torch() -> None:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    original = torch.Tensor.backward

    @functools.wraps(original)
    def backward(self: Any, *args: Any, **kwargs: Any) -> Any:
        _on_backward(self)
        return original(self, *args, **kwargs)

    torch.Tensor.backward = backward  # type: ignore[method-assign]
    handle = register_optimizer_step_post_hook(_on_optimizer_step)

    def undo() -> None:
        torch.Tensor.backward = original  # type: ignore[method-assign]
        handle.remove()

    _undo.append(undo)


@functools.cache
def _callback_class() -> type:
    from transformers import TrainerCallback

    class KaipAutologCallback(TrainerCallback):  # type: ignore[misc]
        """Records a Trainer's params, logs and model through autolog's session."""

        def __init__(self, trainer: Any) -> None:
            self._trainer = weakref.ref(trainer)
            self._run: str | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if _config is None:
                return
            try:
                self._run = _get_session().trainer_begin(args, state, model)
            except Exception as err:
                _warn("starting the run", err)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if _config is None or not logs:
                return
            try:
                session = _get_session()
                if self._run is None:  # evaluate() before any train(): its run
                    self._run = session.sink.current_run("transformers", getattr(args, "run_name", None))
                for key, value in logs.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        session.add(self._run, key, value, state.global_step)
                if session.trainers:
                    session.set_progress(int(state.global_step), int(state.max_steps or 0) or None,
                                         loss=logs.get("loss"), learning_rate=logs.get("learning_rate"))
            except Exception as err:
                _warn("logging metrics", err)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if _config is None or self._run is None:
                return
            session = _session
            if session is not None:
                session.trainer_end(self._run, self._trainer(), state)

    return KaipAutologCallback


def _patch_trainer(trainer_cls: type) -> None:
    original = trainer_cls.__init__
    if getattr(original, "_kaip_autolog", False):
        return
    callback = _callback_class()

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        # A subclass's __init__ reaches this through super(): add the callback once.
        if _config is not None and not any(isinstance(c, callback) for c in self.callback_handler.callbacks):
            self.add_callback(callback(self))

    __init__._kaip_autolog = True  # type: ignore[attr-defined]
    trainer_cls.__init__ = __init__  # type: ignore[method-assign]
    _undo.append(lambda: setattr(trainer_cls, "__init__", original))


class _TrainerImportHook(importlib.abc.MetaPathFinder):
    """Patches `Trainer` right after `transformers.trainer` is imported, so that autolog need not import it."""

    MODULE = "transformers.trainer"

    def __init__(self) -> None:
        self.busy = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.MODULE or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(fullname)  # the ordinary finders, this one stepping aside
        finally:
            self.busy = False
        loader = spec.loader if spec is not None else None
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return None
        original = loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            original(module)
            with _lock:
                if _config is not None and self in sys.meta_path:
                    sys.meta_path.remove(self)
                    _patch_trainer(module.Trainer)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _patch_transformers() -> None:
    loaded = sys.modules.get(_TrainerImportHook.MODULE)
    if loaded is not None and hasattr(loaded, "Trainer"):
        _patch_trainer(loaded.Trainer)
        return
    if importlib.util.find_spec("transformers") is None:
        return
    hook = _TrainerImportHook()
    sys.meta_path.insert(0, hook)
    _undo.append(lambda: hook in sys.meta_path and sys.meta_path.remove(hook))


# ---- public API ------------------------------------------------------------------------------------------------


def autolog(*, log_models: bool = True, registered_model_name: str | None = None, disable: bool = False) -> None:
    """Record params, metrics and the model of transformers and plain PyTorch training into the current run.

    Idempotent: calling it again only changes the options. See the module documentation for what is recorded and
    where the run is (a TrainJob's files, or the Kaip server through MLflow).

    Args:
        log_models: Save the model when `Trainer.train()` ends and log it as the run's `model/` artifacts.
        registered_model_name: Register each logged model as a new version of this registered model.
        disable: Undo the patching, write what is buffered and end the run autolog started.
    """
    global _config, _session
    with _lock:
        if disable:
            while _undo:
                _undo.pop()()
            _config = None
            session, _session = _session, None
        else:
            first = _config is None
            _config = _Config(log_models, registered_model_name)
            if first:
                _patch_torch()
                _patch_transformers()
            return
    if session is not None:
        session.close()


def log_model(model: Any, name: str = "model", tokenizer: Any = None, *,
              registered_model_name: str | None = None) -> None:
    """Log a model as the current run's `<name>/` artifacts (the way to log a plain PyTorch loop's model).

    A model with `save_pretrained()` (transformers, peft) is saved that way; another `torch.nn.Module` (unwrapped
    from DDP and `torch.compile`) as `model.safetensors` plus `kaip-model.json` (its class and size). The run is the
    one autolog records into (the active MLflow run, started if needed, or the TrainJob's run); on ranks other
    than 0 nothing is saved.

    Args:
        model: The trained model.
        name: The artifact folder (and, in a TrainJob, the output label).
        tokenizer: A tokenizer or processor saved alongside (`save_pretrained`).
        registered_model_name: Register the model as a new version of this name; defaults to the name given
            to `autolog()`.

    Raises:
        TypeError: `model` is neither a `torch.nn.Module` nor has `save_pretrained()`.
    """
    config = _config
    register = registered_model_name or (config.registered_model_name if config is not None else None)
    session = _get_session()
    if type(session.sink) is _NullSink:
        return  # not rank 0
    session.log_model(model, name, tokenizer, register)
