"""Table definitions. The schema itself is created and evolved by the Alembic migrations beside this file;
these definitions are what the code queries with, and a test checks that both agree."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, MetaData, String, Table, Text

metadata = MetaData()

resources = Table(
    "resources", metadata,
    Column("kind_key", String(255), primary_key=True),
    Column("namespace", String(253), primary_key=True),
    Column("name", String(253), primary_key=True),
    Column("uid", String(36), nullable=False, unique=True),
    Column("resource_version", BigInteger, nullable=False),
    Column("data", Text, nullable=False),
)

# Which objects each owner has, so that cascading deletion does not scan every object.
owner_refs = Table(
    "owner_refs", metadata,
    Column("owner_uid", String(36), primary_key=True),
    Column("dependent_uid", String(36), primary_key=True),
    Column("kind_key", String(255), nullable=False),
    Column("namespace", String(253), nullable=False),
    Column("name", String(253), nullable=False),
    Index("ix_owner_refs_dependent", "dependent_uid"),
)

# The change log: one row per committed write, its primary key the resourceVersion it produced.
changes = Table(
    "changes", metadata,
    Column("rv", BigInteger, primary_key=True, autoincrement=False),
    Column("type", String(16), nullable=False),
    Column("kind_key", String(255), nullable=False),
    Column("namespace", String(253), nullable=False),
    Column("name", String(253), nullable=False),
    Column("data", Text, nullable=False),
    Index("ix_changes_kind_rv", "kind_key", "rv"),
)

counters = Table(
    "counters", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

tokens = Table(
    "tokens", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user", String(253), nullable=False),
    Column("namespace", String(253), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("description", String(512), nullable=False),
)
