"""Label selectors in the Kubernetes string syntax (`a=b,c!=d,e in (x,y),!f,g`), parsed and matched."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kaip.api.errors import bad_request
from kaip.api.meta import label_value_error, qualified_name_error


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        # "!=" and "notin" match objects that lack the key, as Kubernetes does.
        return not present or value not in self.values


_SET = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside a parenthesised value set."""
    parts, depth, current = [], 0, []
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def parse_selector(selector: str | None) -> list[Requirement]:
    if not selector or not selector.strip():
        return []
    reqs: list[Requirement] = []
    for part in _split(selector):
        if m := _SET.match(part):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(m.group(1), m.group(2), values))
        elif m := _EQ.match(part):
            op = "!=" if m.group(2) == "!=" else "="
            reqs.append(Requirement(m.group(1), op, (m.group(3),)))
        elif m := _EXISTS.match(part):
            reqs.append(Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
        else:
            raise bad_request(f"unable to parse requirement: {part.strip()!r} in labelSelector {selector!r}")
    for req in reqs:
        # As Kubernetes' parser does: keys and values must be valid label keys and values.
        if err := qualified_name_error(req.key):
            raise bad_request(f"invalid label key {req.key!r} in labelSelector {selector!r}: {err}")
        if req.op in ("in", "notin") and not req.values:
            raise bad_request(f"for 'in', 'notin' operators, values set can't be empty (labelSelector {selector!r})")
        for value in req.values:
            if err := label_value_error(value):
                raise bad_request(f"invalid label value {value!r} in labelSelector {selector!r}: {err}")
    return reqs


def matches(reqs: list[Requirement], labels: dict[str, str] | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels) for r in reqs)
