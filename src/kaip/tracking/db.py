"""Transactions and the few dialect differences (upserts, case-sensitive LIKE) the tracking services need."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Column, ColumnElement, Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

from kaip.store.store import Store

T = TypeVar("T")


def now_ms() -> int:
    return int(time.time() * 1000)


class Database:
    """Runs functions in transactions on the platform store's engine. Writes go through the store's own write
    path, so that on SQLite they are serialised with every other writer in the process."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine
        self.is_sqlite = store.is_sqlite

    def write(self, fn: Callable[[Connection], T]) -> T:
        return self.store._write(lambda conn: (fn(conn), 0))

    def read(self, fn: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            return fn(conn)

    def upsert(self, conn: Connection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str],
               update: Sequence[str], where: Callable[[Any, Any], ColumnElement[bool]] | None = None) -> None:
        """INSERT ... ON CONFLICT (keys) DO UPDATE SET update-columns [WHERE where(table, excluded)]."""
        if not rows:
            return
        dialect = sqlite if self.is_sqlite else postgresql
        stmt = dialect.insert(table)
        excluded = stmt.excluded
        if update:
            stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_={c: excluded[c] for c in update},
                                              where=where(table.c, excluded) if where is not None else None)
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
        conn.execute(stmt, list(rows))

    def like(self, column: Column[Any] | ColumnElement[Any], pattern: str, *, case_insensitive: bool) -> Any:
        """SQL LIKE with MLflow's semantics: LIKE is case-sensitive, ILIKE is not. SQLite's LIKE ignores case, so
        there a case-sensitive LIKE becomes GLOB."""
        if case_insensitive:
            return column.ilike(pattern)
        if not self.is_sqlite:
            return column.like(pattern)
        glob = "".join("*" if c == "%" else "?" if c == "_" else f"[{c}]" if c in "*?[]" else c for c in pattern)
        return column.op("GLOB")(glob)
