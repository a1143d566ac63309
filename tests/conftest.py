"""Shared fixtures: stores on SQLite and PostgreSQL, and a live server on a free loopback port."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaip.api import core  # noqa: F401  (registers the core kinds)
from kaip.store import Store
from kaip.testing.live import LiveServer, live_server
from kaip.testing.postgres import temporary_postgres

# Workloads started by tests must not inherit a developer's server settings.
for var in ("KAIP_SERVER", "KAIP_TOKEN", "KAIP_HOME", "KAIP_DATABASE_URL"):
    os.environ.pop(var, None)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with temporary_postgres() as url:
        yield url


def _reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that takes this runs once on SQLite and once on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kaip.db'}"
    url = request.getfixturevalue("postgres_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store(database_url)
    yield s
    s.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """A real server (SQLite, controllers, executor) on a free port; `server.client()` is the admin."""
    with live_server(tmp_path / "home", bookmark_seconds=0.5) as live:
        yield live


@pytest.fixture
def pg_server(tmp_path: Path, postgres_url: str) -> Iterator[LiveServer]:
    _reset_postgres(postgres_url)
    with live_server(tmp_path / "home", database_url=postgres_url, bookmark_seconds=0.5) as live:
        yield live
