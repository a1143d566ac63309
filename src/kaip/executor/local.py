"""The local process executor: containers become processes on this machine.

Each container attempt gets a directory of its own under `$KAIP_HOME/pods/` with three files: `pid`
(written as soon as the process exists, before the store hears of it), `exit` (written by the shim when
the command ends) and `log`. Because the attempt directory is a pure function of the pod and the
restart count, starting is idempotent: a server killed between starting a process and recording it finds
the pid file on restart and adopts the process instead of starting a second one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# Passed through from the server's environment; everything else a container sees comes from its spec,
# so the server's own secrets (database URL, tokens) never reach a workload.
PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "VIRTUAL_ENV", "PYTHONPATH",
                   "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                   "CUDA_VISIBLE_DEVICES")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    start_ticks: int

    def container_id(self) -> str:
        return f"process://{self.pid}@{self.start_ticks}"

    @staticmethod
    def parse(container_id: str | None) -> ProcessRef | None:
        if not container_id or not container_id.startswith("process://"):
            return None
        pid, _, ticks = container_id.removeprefix("process://").partition("@")
        try:
            return ProcessRef(int(pid), int(ticks or 0))
        except ValueError:
            return None


def _start_ticks(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def resolve_command(argv: list[str]) -> list[str]:
    """`python` and `python3` run in the project's own environment, as an image's python would."""
    if argv and argv[0] in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    return argv


class LocalExecutor:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    # ---- layout ---------------------------------------------------------------------------------------

    def pod_dir(self, namespace: str, name: str, uid: str) -> Path:
        return self.root / namespace / f"{name}-{uid[:8]}"

    def attempt_dir(self, namespace: str, name: str, uid: str, container: str, attempt: int) -> Path:
        return self.pod_dir(namespace, name, uid) / container / str(attempt)

    def log_path(self, namespace: str, name: str, uid: str, container: str, attempt: int) -> Path:
        return self.attempt_dir(namespace, name, uid, container, attempt) / "log"

    # ---- lifecycle ------------------------------------------------------------------------------------

    def start(self, attempt_dir: Path, command: list[str], env: dict[str, str], cwd: Path) -> ProcessRef:
        """Start (or adopt, if this attempt already started) a container process."""
        existing = self.adopt(attempt_dir)
        if existing is not None or (attempt_dir / "exit").exists():
            return existing or self._read_pid(attempt_dir) or ProcessRef(0, 0)
        attempt_dir.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        full_env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        full_env.update(OFFLINE_ENV)
        full_env.update(env)
        argv = [sys.executable, "-m", "kaip.executor.shim", str(attempt_dir / "exit"), "--",
                *resolve_command(command)]
        with open(attempt_dir / "log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=cwd, env=full_env, start_new_session=True)
        ticks = _start_ticks(proc.pid) or 0
        ref = ProcessRef(proc.pid, ticks)
        tmp = attempt_dir / "pid.tmp"
        tmp.write_text(f"{ref.pid} {ref.start_ticks}\n")
        os.replace(tmp, attempt_dir / "pid")
        with self._lock:
            self._children[proc.pid] = proc
        return ref

    @staticmethod
    def _read_pid(attempt_dir: Path) -> ProcessRef | None:
        try:
            pid, ticks = (attempt_dir / "pid").read_text().split()
            return ProcessRef(int(pid), int(ticks))
        except (OSError, ValueError):
            return None

    def adopt(self, attempt_dir: Path) -> ProcessRef | None:
        ref = self._read_pid(attempt_dir)
        return ref if ref is not None and self.alive(ref) else None

    def alive(self, ref: ProcessRef) -> bool:
        self._reap()
        ticks = _start_ticks(ref.pid)
        # A different start time means the pid was reused by another process: ours is gone.
        return ticks is not None and (ref.start_ticks == 0 or ticks == ref.start_ticks)

    def exit_code(self, attempt_dir: Path) -> int | None:
        try:
            return int((attempt_dir / "exit").read_text().strip())
        except (OSError, ValueError):
            return None

    def signal(self, ref: ProcessRef, sig: int = signal.SIGTERM) -> None:
        """Signal the whole process group, so the command's own children stop too."""
        if not self.alive(ref):
            return
        try:
            os.killpg(ref.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap(self) -> None:
        with self._lock:
            for pid, proc in list(self._children.items()):
                if proc.poll() is not None:
                    del self._children[pid]

    def stop_all(self, grace_seconds: float = 5.0) -> None:
        """Stop every container process recorded under this executor's root (SIGTERM, then SIGKILL after the
        grace period). Not what a server does on shutdown (its workloads outlive it); for throwaway servers."""
        refs = [ref for path in self.root.rglob("pid") if (ref := self._read_pid(path.parent)) and self.alive(ref)]
        for ref in refs:
            self.signal(ref, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while any(self.alive(ref) for ref in refs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for ref in refs:
            self.signal(ref, signal.SIGKILL)
        self._reap()

    def shutdown(self) -> None:
        """Leave workloads running: a restarted server adopts them. Only reap what already ended."""
        self._reap()
