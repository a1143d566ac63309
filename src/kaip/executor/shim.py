"""The process shim: runs one container command, forwards termination signals, and records the exit code.

Started in its own session by the executor, it outlives a killed server; the exit code it writes
(atomically, by rename) lets a restarted server learn how an adopted process ended.

Usage: python -m kaip.executor.shim EXIT_FILE -- COMMAND [ARG...]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def _write_exit(path: str, code: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{code}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m kaip.executor.shim EXIT_FILE -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    exit_file, command = argv[0], argv[2:]
    try:
        child = subprocess.Popen(command)
    except OSError as err:
        print(f"kaip: cannot start {command[0]!r}: {err.strerror}", file=sys.stderr, flush=True)
        code = 127 if isinstance(err, FileNotFoundError) else 126
        _write_exit(exit_file, code)
        return code

    def forward(signum: int, _frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    # Report a death by signal the way a shell and Kubernetes do: 128 + signal number.
    code = 128 - code if code < 0 else code
    _write_exit(exit_file, code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
