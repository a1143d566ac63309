"""Reading JSON Lines files whose bad lines are reported as `FILE:LINE: what is wrong`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO


def records(fh: TextIO, path: str | Path, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    """`(where, value)` for every non-blank line, `where` being `FILE:LINE`; a line that is not JSON raises
    `error` naming the file, line and column."""
    for number, line in enumerate(fh, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
