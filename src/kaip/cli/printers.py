"""Tables like kubectl's: upper-case headers, columns padded with three spaces, no borders."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from kaip.server.tables import age  # noqa: F401  (re-exported for the CLI)


def render(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def table_rows(tbl: dict[str, Any], *, wide: bool, with_namespace: bool, header: bool = True) -> list[str]:
    cols = [i for i, c in enumerate(tbl["columnDefinitions"]) if wide or c.get("priority", 0) == 0]
    names = [tbl["columnDefinitions"][i]["name"].upper() for i in cols]
    rows = [[row["cells"][i] for i in cols] for row in tbl["rows"]]
    if with_namespace:
        names = ["NAMESPACE", *names]
        rows = [[row["object"]["metadata"].get("namespace", ""), *r] for row, r in zip(tbl["rows"], rows, strict=True)]
    lines = render(names, rows)
    return lines if header else lines[1:]


def print_table(console: Console, tbl: dict[str, Any], *, wide: bool, with_namespace: bool) -> None:
    for line in table_rows(tbl, wide=wide, with_namespace=with_namespace):
        console.print(line, markup=False)
