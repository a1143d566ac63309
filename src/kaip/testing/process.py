"""A real `kaip up` server process on a free loopback port, for benchmarks and end-to-end checks that must not
share the interpreter (and its GIL) with the client."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from kaip.testing.live import free_port


@contextlib.contextmanager
def kaip_server_process(database_url: str | None = None, home: Path | None = None) -> Iterator[tuple[str, str]]:
    """Yield (url, admin token) of a server started with `python -m kaip.cli.main up`; stopped afterwards."""
    home = home or Path(tempfile.mkdtemp(prefix="kaip-proc-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAIP_")}
    env["KAIP_LOG_LEVEL"] = "WARNING"
    cmd = [sys.executable, "-m", "kaip.cli.main", "up", "--port", str(port), "--home", str(home)]
    if database_url:
        cmd += ["--database-url", database_url]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
                raise RuntimeError(f"the Kaip server did not start: {err}")
            time.sleep(0.1)
        yield url, json.loads((home / "credentials").read_text())["token"]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
