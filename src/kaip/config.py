"""Where Kaip keeps its state, and how clients find the server: `$KAIP_HOME` (default `~/.kaip`),
`KAIP_DATABASE_URL`, `KAIP_SERVER`, `KAIP_TOKEN`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8740


def home(override: str | Path | None = None) -> Path:
    path = Path(override or os.environ.get("KAIP_HOME") or Path.home() / ".kaip").expanduser()
    return path.resolve()


def database_url(home_dir: Path) -> str:
    return os.environ.get("KAIP_DATABASE_URL") or f"sqlite:///{home_dir / 'kaip.db'}"


def credentials_path(home_dir: Path) -> Path:
    return home_dir / "credentials"


@dataclass(frozen=True)
class ClientConfig:
    server: str
    token: str


def write_credentials(home_dir: Path, server: str, token: str, user: str = "admin") -> None:
    """Write the server URL and the admin token, readable by the owner only."""
    path = credentials_path(home_dir)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"server": server, "token": token, "user": user}, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_credentials(home_dir: Path) -> dict[str, str] | None:
    try:
        return json.loads(credentials_path(home_dir).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def client_config(home_override: str | Path | None = None) -> ClientConfig:
    """`KAIP_SERVER` / `KAIP_TOKEN` win; otherwise what `kaip up` wrote into `$KAIP_HOME/credentials`."""
    creds = read_credentials(home(home_override)) or {}
    server = os.environ.get("KAIP_SERVER") or creds.get("server") or f"http://127.0.0.1:{DEFAULT_PORT}"
    token = os.environ.get("KAIP_TOKEN") or creds.get("token") or ""
    return ClientConfig(server.rstrip("/"), token)
