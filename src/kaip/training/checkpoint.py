"""Checkpoints for training code that must survive a killed worker or a preemption.

    from kaip.training.checkpoint import Checkpointer

    ckpt = Checkpointer()                      # KAIP_CHECKPOINT_DIR, set by the launcher
    start = ckpt.load(model=model, optimizer=opt, scheduler=sched)   # None on a fresh start
    step = start.step if start else 0
    while step < total:
        ...train one step...
        step += 1
        if step % every == 0 or ckpt.should_stop():
            ckpt.save(step, model=model, optimizer=opt, scheduler=sched, data={"epoch": e, "batch": b})
        if ckpt.should_stop():
            ckpt.exit()                        # suspended: checkpoint written, leave

A checkpoint is a directory `step-00000042/` with `state.pt` (model, optimizer, scheduler, data position) and one
`rng-<rank>.pt` per rank (torch, CUDA, Python and NumPy generators). Every rank writes its RNG state into a
temporary directory; after a barrier, rank 0 writes the state and renames the directory into place, so a
reader sees a whole checkpoint or none. Only the last `keep` are kept.

`should_stop()` turns SIGTERM (what a suspend or a preemption sends) into an agreed decision: under
torch.distributed every rank learns that *some* rank was asked to stop, so that all of them checkpoint at the
same step instead of one waiting forever in a collective for another that already left.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class Restored:
    step: int
    data: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, flush to disk, then rename over the target."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np
        np.random.set_state(state["numpy"])


class Checkpointer:
    def __init__(self, directory: str | Path | None = None, *, keep: int = 3, handle_sigterm: bool = True) -> None:
        where = directory or os.environ.get("KAIP_CHECKPOINT_DIR")
        if not where:
            raise ValueError("no checkpoint directory: pass one, or run under a TrainJob (KAIP_CHECKPOINT_DIR)")
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.directory = Path(where)
        self.keep = keep
        self._stop_requested = False
        self.attempt = os.environ.get("KAIP_TRAINING_ATTEMPT", "0")
        if handle_sigterm:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    # ---- graceful stop ------------------------------------------------------------------------------------------

    def _on_sigterm(self, _signum: int, _frame: object) -> None:
        self._stop_requested = True

    def should_stop(self) -> bool:
        """Whether any rank was asked to stop (SIGTERM); a collective, so call it at the same point on every rank."""
        if not _distributed():
            return self._stop_requested
        flag = torch.tensor([1 if self._stop_requested else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def exit(self, code: int = 143) -> None:
        """Leave after a stop request was honoured (143 = terminated by SIGTERM, as a shell reports it)."""
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        sys.exit(code)

    # ---- listing ------------------------------------------------------------------------------------------------

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        out = []
        for entry in self.directory.iterdir():
            m = STEP_DIR.match(entry.name)
            if m and (entry / "state.pt").is_file():
                out.append((int(m.group(1)), entry))
        return sorted(out)

    def latest(self) -> tuple[int, Path] | None:
        found = self.checkpoints()
        return found[-1] if found else None

    # ---- save / load --------------------------------------------------------------------------------------------

    def save(self, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
             scheduler: Any = None, data: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
             trainable_only: bool = False) -> Path:
        """Write checkpoint `step` (every rank calls it at the same step). `trainable_only` keeps just the
        parameters that train (a LoRA adapter, not the frozen base model)."""
        rank = _rank()
        final = self.directory / f"step-{step:08d}"
        tmp = self.directory / f".step-{step:08d}.tmp-{self.attempt}"
        tmp.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        pickle.dump(rng_state(), buf)
        atomic_write(tmp / f"rng-{rank}.pt", buf.getvalue())
        _barrier()
        if rank == 0:
            module = _unwrap(model)
            weights = module.state_dict()
            if trainable_only:
                names = {n for n, p in module.named_parameters() if p.requires_grad}
                weights = {k: v for k, v in weights.items() if k in names}
            state = {"step": step, "model": weights, "data": dict(data or {}), "trainable_only": trainable_only,
                     "extra": dict(extra or {})}
            if optimizer is not None:
                state["optimizer"] = optimizer.state_dict()
            if scheduler is not None:
                state["scheduler"] = scheduler.state_dict()
            buf = io.BytesIO()
            torch.save(state, buf)
            atomic_write(tmp / "state.pt", buf.getvalue())
            if final.exists():
                shutil.rmtree(final)  # a step redone after a restart replaces its older copy
            os.replace(tmp, final)
            self._prune()
        _barrier()
        return final

    def _prune(self) -> None:
        for _, path in self.checkpoints()[:-self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        for entry in self.directory.iterdir():
            if entry.name.startswith(".step-") and not entry.name.endswith(f".tmp-{self.attempt}"):
                shutil.rmtree(entry, ignore_errors=True)  # left by a group that died mid-save

    def load(self, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
             scheduler: Any = None, path: Path | None = None) -> Restored | None:
        """Restore the latest checkpoint (or `path`) into the given objects; None when there is none."""
        if path is None:
            found = self.latest()
            if found is None:
                return None
            path = found[1]
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        _unwrap(model).load_state_dict(state["model"], strict=not state.get("trainable_only", False))
        if optimizer is not None and "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
        rng_file = path / f"rng-{_rank()}.pt"
        if not rng_file.exists():
            rng_file = path / "rng-0.pt"  # the world shrank or grew: fall back to rank 0's generators
        if rng_file.exists():
            set_rng_state(pickle.loads(rng_file.read_bytes()))
        return Restored(int(state["step"]), state.get("data") or {}, state.get("extra") or {}, path)


def report_progress(step: int, total_steps: int | None = None, **metrics: float | None) -> None:
    """Rank 0 tells the launcher how far it is (shown by `kaip get trainjobs` and in trainerStatus)."""
    import json
    import time

    where = os.environ.get("KAIP_TRAIN_DIR")
    if not where or _rank() != 0:
        return
    report: dict[str, Any] = {"step": step, "total_steps": total_steps,
                              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report.update({k: v for k, v in metrics.items() if v is not None})
    Path(where).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(where) / "progress.json", json.dumps(report).encode())
