"""A throwaway PostgreSQL server from Debian's binaries, for tests and benchmarks.

`KAIP_TEST_DATABASE_URL` (an existing server) wins; otherwise `initdb` + `pg_ctl` start one in a
temporary directory on a free loopback port, as the `postgres` user when running as root (initdb
refuses to run as root).

Debian 12's PostgreSQL has no pgvector package; `temporary_postgres(pgvector=True)` takes the binaries of the
`pgserver` wheel instead (PostgreSQL 16 built with the pgvector extension, a test dependency from PyPI).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    pass


def _bin_dir(pgvector: bool = False) -> Path:
    if pgvector:  # found, not imported: importing pgserver sets up things the binaries do not need
        spec = importlib.util.find_spec("pgserver")
        if spec is None or not spec.submodule_search_locations:
            raise PostgresUnavailable("PostgreSQL with pgvector comes from the pgserver package: run `make install`")
        return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgresUnavailable("PostgreSQL is not installed: run `make install` (it installs Debian's postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@contextmanager
def temporary_postgres(*, pgvector: bool = False) -> Iterator[str]:
    """Yield a SQLAlchemy URL to an empty database; the server and its files go away afterwards. With
    `pgvector`, a server whose `create extension vector` works."""
    if os.environ.get("KAIP_TEST_DATABASE_URL") and not pgvector:
        yield os.environ["KAIP_TEST_DATABASE_URL"]
        return
    bindir = _bin_dir(pgvector)
    root = Path(tempfile.mkdtemp(prefix="kaip-pg-"))
    data = root / "data"
    port = _free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        os.chmod(root, 0o700)
    try:
        subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "kaip", "--auth=trust",
                                  "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
        opts = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off -c max_connections=200"
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"),
                                  "-w", "start"]), check=True, capture_output=True)
        try:
            subprocess.run(_as_owner([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "kaip",
                                      "kaip"]), check=True, capture_output=True)
            yield f"postgresql+psycopg://kaip@127.0.0.1:{port}/kaip"
        finally:
            subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                           capture_output=True)
    except subprocess.CalledProcessError as err:
        raise PostgresUnavailable(f"could not start PostgreSQL: {err.stderr.decode(errors='replace')}") from err
    finally:
        shutil.rmtree(root, ignore_errors=True)
