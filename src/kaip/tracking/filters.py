"""MLflow's search syntax, parsed without I/O: `filter_string`, `order_by` and page tokens.

A filter is comparisons joined by AND (MLflow has no OR for runs):

    metrics.loss < 0.5 and params.lr = '0.01' and tags.`team name` LIKE 'nlp%' and attributes.status IN ('FINISHED')

Identifiers are `<type>.<key>` where the type is metric(s), param(s)/parameter(s), tag(s) or
attribute(s)/attr/run; a key with spaces or dots is quoted with backticks or double quotes. Metric
and numeric attribute values are numbers; the rest are single- or double-quoted strings. The parser
returns plain data that the service turns into SQL, so the grammar is tested on its own.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from kaip.tracking.errors import invalid_parameter

METRIC, PARAM, TAG, ATTRIBUTE = "metric", "param", "tag", "attribute"
_TYPES = {
    "metric": METRIC, "metrics": METRIC,
    "param": PARAM, "params": PARAM, "parameter": PARAM, "parameters": PARAM,
    "tag": TAG, "tags": TAG,
    "attribute": ATTRIBUTE, "attributes": ATTRIBUTE, "attr": ATTRIBUTE, "run": ATTRIBUTE,
}
NUMERIC_OPS = {"=", "!=", "<", "<=", ">", ">="}
STRING_OPS = {"=", "!=", "LIKE", "ILIKE", "IN", "NOT IN"}
NULL_OPS = {"IS NULL", "IS NOT NULL"}
# Attribute names as MLflow spells them (and its alternates), mapped to one canonical name.
STRING_ATTRIBUTES = {"run_id": "run_id", "run_name": "run_name", "run name": "run_name", "Run name": "run_name",
                     "Run Name": "run_name", "status": "status", "user_id": "user_id",
                     "artifact_uri": "artifact_uri", "lifecycle_stage": "lifecycle_stage"}
NUMERIC_ATTRIBUTES = {"start_time": "start_time", "end_time": "end_time", "created": "start_time",
                      "Created": "start_time"}


@dataclass(frozen=True)
class Comparison:
    type: str  # metric, param, tag or attribute
    key: str
    op: str  # =, !=, <, <=, >, >=, LIKE, ILIKE, IN, NOT IN, IS NULL, IS NOT NULL
    value: Any  # float for metrics and numeric attributes, str, tuple[str, ...] for IN, None for IS NULL


@dataclass(frozen=True)
class OrderBy:
    type: str
    key: str
    ascending: bool


_TOKEN = re.compile(r"""
    \s*(?:
      (?P<str>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*")
    | (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])
    | (?P<op><=|>=|!=|<>|==|=|<|>)
    | (?P<punct>[(),])
    | (?P<bt>`[^`]*`)
    | (?P<word>[A-Za-z_]\w*(?:\.(?:`[^`]*`|"[^"]*"|[\w.:/-]+))?)
    )""", re.VERBOSE)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise invalid_parameter(f"Invalid filter {text!r}: cannot parse at position {pos}: {text[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _unquote(s: str) -> str:
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"`":
        body = s[1:-1]
        if s[0] == "'":
            body = body.replace("''", "'")
        return re.sub(r"\\(.)", r"\1", body) if s[0] != "`" else body
    return s


def _identifier(word: str, where: str, string_attrs: dict[str, str] | None = None,
                numeric_attrs: dict[str, str] | None = None) -> tuple[str, str]:
    prefix, dot, key = word.partition(".")
    if not dot:
        # MLflow accepts a few bare attribute names only in order_by; in filters it wants a type.
        raise invalid_parameter(f"Invalid identifier {word!r} in {where}: use metrics.<key>, params.<key>, "
                                "tags.<key> or attributes.<name>")
    kind = _TYPES.get(prefix.lower())
    if kind is None:
        raise invalid_parameter(f"Invalid entity type {prefix!r} in {where}: valid types are metrics, params, tags, "
                                "attributes")
    if key[:1] not in ("`", '"') and re.search(r"\s", key):
        raise invalid_parameter(f"Invalid identifier {word!r} in {where}: quote a key that has spaces with "
                                "backticks, e.g. metrics.`my key`")
    key = _unquote(key)
    if not key:
        raise invalid_parameter(f"Invalid identifier {word!r} in {where}: the key is empty")
    if kind == ATTRIBUTE:
        strings = STRING_ATTRIBUTES if string_attrs is None else string_attrs
        numbers = NUMERIC_ATTRIBUTES if numeric_attrs is None else numeric_attrs
        canonical = strings.get(key) or numbers.get(key)
        if canonical is None:
            valid = sorted(set(strings.values()) | set(numbers.values()))
            raise invalid_parameter(f"Invalid attribute key {key!r} in {where}: valid keys are {valid}")
        key = canonical
    return kind, key


def parse_filter(text: str | None, *, string_attrs: dict[str, str] | None = None,
                 numeric_attrs: dict[str, str] | None = None, bare_attributes: bool = False) -> list[Comparison]:
    """Parse an MLflow filter into comparisons that must all hold. The defaults are the run attributes;
    experiment and registry searches pass their own, and allow bare attribute names (`name LIKE 'x%'`)."""
    strings = STRING_ATTRIBUTES if string_attrs is None else string_attrs
    numbers = NUMERIC_ATTRIBUTES if numeric_attrs is None else numeric_attrs
    if not text or not text.strip():
        return []
    toks = _tokens(text)
    out: list[Comparison] = []
    i = 0

    def take() -> tuple[str, str]:
        nonlocal i
        if i >= len(toks):
            raise invalid_parameter(f"Invalid filter {text!r}: it ends too early")
        tok = toks[i]
        i += 1
        return tok

    while True:
        kind, word = take()
        if kind == "bt":
            raise invalid_parameter(f"Invalid filter {text!r}: a quoted key needs a type, e.g. metrics.{word}")
        if kind != "word":
            raise invalid_parameter(f"Invalid filter {text!r}: expected an identifier, got {word!r}")
        if bare_attributes and "." not in word:
            word = "attributes." + word
        type_, key = _identifier(word, "the filter", strings, numbers)
        kind, op = take()
        if kind == "op":
            op = {"==": "=", "<>": "!="}.get(op, op)
        elif kind == "word" and op.upper() in ("LIKE", "ILIKE", "IN"):
            op = op.upper()
        elif kind == "word" and op.upper() == "NOT":
            _, nxt = take()
            if nxt.upper() != "IN":
                raise invalid_parameter(f"Invalid filter {text!r}: expected IN after NOT")
            op = "NOT IN"
        elif kind == "word" and op.upper() == "IS":
            _, nxt = take()
            if nxt.upper() == "NOT":
                _, nxt = take()
                op = "IS NOT NULL"
            else:
                op = "IS NULL"
            if nxt.upper() != "NULL":
                raise invalid_parameter(f"Invalid filter {text!r}: expected NULL after IS")
        else:
            raise invalid_parameter(f"Invalid filter {text!r}: expected a comparison operator after {word!r}, "
                                    f"got {op!r}")
        value: Any = None
        numeric = type_ == METRIC or (type_ == ATTRIBUTE and key in numbers.values())
        if op in NULL_OPS:
            if type_ not in (PARAM, TAG):
                raise invalid_parameter(f"Invalid comparator {op!r} for {type_} {key!r}: IS NULL applies to params "
                                        "and tags")
        elif op in ("IN", "NOT IN"):
            if numeric:
                raise invalid_parameter(f"Invalid comparator {op!r} for numeric {type_} {key!r}")
            kind, paren = take()
            if paren != "(":
                raise invalid_parameter(f"Invalid filter {text!r}: {op} needs a parenthesised list of strings")
            items: list[str] = []
            while True:
                kind, item = take()
                if kind != "str":
                    raise invalid_parameter(f"Invalid filter {text!r}: {op} lists hold quoted strings, got {item!r}")
                items.append(_unquote(item))
                _, sep = take()
                if sep == ")":
                    break
                if sep != ",":
                    raise invalid_parameter(f"Invalid filter {text!r}: expected ',' or ')' in the {op} list")
            value = tuple(items)
        else:
            kind, raw = take()
            if numeric:
                if op not in NUMERIC_OPS:
                    raise invalid_parameter(f"Invalid comparator {op!r} for {type_} {key!r}: use one of "
                                            f"{sorted(NUMERIC_OPS)}")
                if kind != "num":
                    raise invalid_parameter(f"Expected a numeric value for {type_} {key!r}, got {raw!r}")
                value = float(raw) if type_ == METRIC else int(float(raw))
            else:
                if op not in STRING_OPS:
                    raise invalid_parameter(f"Invalid comparator {op!r} for {type_} {key!r}: use one of "
                                            f"{sorted(STRING_OPS - {'IN', 'NOT IN'})}")
                if kind != "str":
                    raise invalid_parameter(f"Expected a quoted string value for {type_} {key!r}, got {raw!r}")
                value = _unquote(raw)
        out.append(Comparison(type_, key, op, value))
        if i >= len(toks):
            return out
        kind, conj = take()
        if conj.upper() != "AND":
            extra = " (OR is not supported)" if conj.upper() == "OR" else ""
            raise invalid_parameter(f"Invalid filter {text!r}: expected AND, got {conj!r}{extra}")


def parse_order_by(clauses: list[str] | None, *, string_attrs: dict[str, str] | None = None,
                   numeric_attrs: dict[str, str] | None = None) -> list[OrderBy]:
    """`["metrics.loss ASC", "attributes.start_time DESC", "params.lr"]`; bare attribute names are allowed."""
    out: list[OrderBy] = []
    for clause in clauses or []:
        text = clause.strip()
        m = re.fullmatch(r"(.+?)(?:\s+(asc|desc))?", text, re.IGNORECASE)
        if not m or not text:
            raise invalid_parameter(f"Invalid order_by clause {clause!r}")
        ident, direction = m.group(1).strip(), (m.group(2) or "asc").lower()
        if "." not in ident and not ident.startswith(("`", '"')):
            ident = "attributes." + ident
        type_, key = _identifier(ident, f"order_by clause {clause!r}", string_attrs, numeric_attrs)
        out.append(OrderBy(type_, key, direction == "asc"))
    return out


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def decode_page_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token.encode()))["offset"]
    except (binascii.Error, ValueError, KeyError, TypeError) as err:
        raise invalid_parameter(f"Invalid page token {token!r}") from err
    if not isinstance(offset, int) or offset < 0:
        raise invalid_parameter(f"Invalid page token {token!r}")
    return offset


def like_to_regex(pattern: str, *, case_insensitive: bool = False) -> re.Pattern[str]:
    """SQL LIKE (`%`, `_`) as a Python regex, for filtering in memory."""
    parts = [".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if case_insensitive else 0))
