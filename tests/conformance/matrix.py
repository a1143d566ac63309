"""The support matrix in docs/conformance.md, generated from Kaip's schemas and the upstream CRDs.

    PYTHONPATH=tests .venv/bin/python -m conformance.matrix --write   # rewrite the generated part of the docs

`test_matrix.py` fails when the docs differ from what this renders, so the table cannot drift from the code.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

from conformance.harness import (
    EXTRA_RULES,
    GENERATED_GROUPS,
    NOT_IMPLEMENTED,
    ROOT,
    cel_rules,
    checked_versions,
    crd_file,
    crd_versions,
    matrix_cached,
    upstream_kinds,
)
from kaip.api.kinds import KindInfo

DOCS = ROOT / "docs" / "conformance.md"
BEGIN = "<!-- BEGIN GENERATED: support matrix (PYTHONPATH=tests python -m conformance.matrix --write) -->"
END = "<!-- END GENERATED: support matrix -->"


def _cel_section(info: KindInfo, version: str) -> list[str]:
    """Upstream's CEL rules in the schema of `version`: where each sits, when it is evaluated, and how Kaip
    enforces it (test_cel.py breaks each on purpose)."""
    rules = cel_rules(info.key, version)
    if not rules:
        return []
    refused = matrix_cached(info.key, version).refused
    out = [f"Upstream's CEL rules (`x-kubernetes-validations`): {len(rules)}, evaluated by the suite "
           "(`conformance/cel.py`) on every document it checks, and each broken on purpose in "
           "`data/cel_violations.yaml`.", "",
           "| at | message | evaluated on | Kaip |", "|---|---|---|---|"]
    for rule in sorted(rules, key=lambda r: (r.path, r.message)):
        # the fields Kaip refuses altogether that hold the rule, or that it reads (`self.topologyName`)
        holders = [r for r in sorted(refused) if rule.path == r or rule.path.startswith((f"{r}.", f"{r}["))]
        holders += [r for r in sorted(refused) if r.rpartition(".")[0] == rule.path
                    and re.search(rf"\b(old)?[sS]elf\.{re.escape(r.rpartition('.')[2])}\b", rule.rule)]
        if rule.path.startswith("status"):
            when, kaip = "status writes", "status is written by Kaip's controllers"
        elif rule.transition or "status" in rule.rule:
            when, kaip = "updates", "update check"
        else:
            when, kaip = "creates and updates", "schema check"
        if holders:
            kaip = "refuses " + ", ".join(f"`{h}`" for h in holders)
        out.append(f"| `{rule.path or '(object)'}` | {rule.message} | {when} | {kaip} |")
    out.append("")
    return out


def _kind_section(info: KindInfo) -> list[str]:
    version = info.version
    m = matrix_cached(info.key, version)
    out = [f"### {info.kind} (`{info.api_version}`)", ""]
    out.append(f"Upstream fields under the body: {len(m.implemented) + len(m.refused)}; implemented "
               f"{len(m.implemented)}; refused {len(m.refused)} (listed below, with each refused field's subtree "
               "left out).")
    out.append("")
    grouped: dict[str, dict[str, list[str]]] = defaultdict(lambda: {NOT_IMPLEMENTED: [], "unknown field": []})
    for path, why in sorted(m.refused.items()):
        parent, _, name = path.rpartition(".")
        grouped[parent or "(body)"][why].append(f"`{name}`")
    if grouped:
        out += ["| under | refused: declared, not implemented (message names the field) | refused: unknown field |",
                "|---|---|---|"]
        for parent, whys in sorted(grouped.items()):
            out.append(f"| `{parent}` | {', '.join(whys[NOT_IMPLEMENTED]) or '—'} | "
                       f"{', '.join(whys['unknown field']) or '—'} |")
        out.append("")
    rules = EXTRA_RULES.get(info.key, ())
    if rules:
        out += ["Checks beyond the CRD schema (a document the schema takes, refused at this path with this message):",
                "", "| path | message contains | why |", "|---|---|---|"]
        out += [f"| `{r.path}` | {r.message} | {r.why} |" for r in rules]
        out.append("")
    out += _cel_section(info, version)
    return out


def render() -> str:
    kinds = upstream_kinds()
    lines = [BEGIN, "", "| kind | Kaip serves | upstream CRD | versions checked | generated checks |",
             "|---|---|---|---|---|"]
    for info in kinds:
        path = crd_file(info)
        if path is None:
            crd_cell, checked = "none: a Kubernetes built-in kind, CRD checks skipped", "—"
        else:
            crd_cell = f"`{path.relative_to(path.parents[1])}` ({', '.join(crd_versions(info))})"
            checked = ", ".join(checked_versions(info)) or "none"
        generated = "yes" if info.group in GENERATED_GROUPS and path is not None else "not yet"
        group = info.group or "core"
        lines.append(f"| {info.kind} (`{group}`) | {', '.join(info.versions)} | {crd_cell} | {checked} | "
                     f"{generated} |")
    lines += ["", "## Per kind: refused upstream fields and extra checks", ""]
    for info in kinds:
        if crd_file(info) is not None and info.version in crd_versions(info):
            lines += _kind_section(info)
    lines.append(END)
    return "\n".join(lines) + "\n"


def generated_part(text: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    return text[start:end + len(END)] + "\n" if start >= 0 and end >= 0 else ""


def write(path: Path = DOCS) -> None:
    text = path.read_text()
    old = generated_part(text)
    assert old, f"{path}: the generated markers are missing"
    path.write_text(text.replace(old, render()))


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    else:
        sys.stdout.write(render())
