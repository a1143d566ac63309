"""The machine as a node: what it can hand out (CPU, memory, GPUs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeCapacity:
    cpu: int
    memory_bytes: int
    gpus: int

    def as_resources(self) -> dict[str, str]:
        out = {"cpu": str(self.cpu), "memory": f"{self.memory_bytes // (1024 * 1024)}Mi"}
        if self.gpus:
            out["nvidia.com/gpu"] = str(self.gpus)
        return out


def _memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gpus() -> int:
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def detect() -> NodeCapacity:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return NodeCapacity(cpu=cpus, memory_bytes=_memory_bytes(), gpus=_gpus())
