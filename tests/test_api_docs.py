"""The SDK's API reference is generated from its docstrings with pdoc (as `make docs` does), here in every test
run: the build succeeds without warnings, and every public method of every exported class is documented."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import kaip.sdk


def test_api_reference_builds_without_warnings(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pdoc", "-d", "google", "-o", str(tmp_path), "kaip.sdk"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Warn" not in done.stdout + done.stderr, done.stdout + done.stderr
    page = (tmp_path / "kaip" / "sdk.html").read_text()
    for name in ("Client.train", "Client.fine_tune", "Client.run_pipeline", "Client.deploy", "Endpoint.chat",
                 "TrainJob.wait", "autolog"):
        assert f'id="{name}"' in page, name


def test_every_public_sdk_call_has_a_docstring() -> None:
    missing = []
    for name in kaip.sdk.__all__:
        obj = getattr(kaip.sdk, name)
        if not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                    continue
                if not inspect.getdoc(member):
                    missing.append(f"{name}.{attr}")
    assert not missing, f"undocumented: {missing}"
