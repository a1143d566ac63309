"""The subset of CEL that the `kfp` compiler writes into `triggerPolicy.condition`.

`dsl.If(a > b)` compiles to `inputs.parameter_values['pipelinechannel--a'] > inputs.parameter_values[...]`,
`dsl.Elif`/`dsl.Else` to conjunctions of negated earlier conditions (`!(...) && ...`). This evaluates exactly
that grammar — literals, parameter lookups, `int()/double()/string()/bool()`, comparisons, `!`, `&&`, `||` —
without `eval`, and names the offending text when an expression is outside it.
"""

from __future__ import annotations

import json
import re
from typing import Any

_TOKEN = re.compile(r"""\s*(?:(?P<num>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
                        |(?P<op>&&|\|\||==|!=|<=|>=|<|>|!|\(|\)|\[|\])|(?P<name>[A-Za-z_][A-Za-z0-9_.]*))""",
                    re.VERBOSE)
_FUNCS = {"int": lambda v: int(float(v)), "double": float, "string": str, "bool": bool,
          "parseJson": lambda v: json.loads(v) if isinstance(v, str) else v}


class CelError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise CelError(f"unsupported condition syntax at {text[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind).strip()))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str, params: dict[str, Any], *, dry: bool = False) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.params = params
        self.text = text
        self.dry = dry  # parse only: no values are looked up, compared or converted

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise CelError(f"expected {value or 'a value'} in condition {self.text!r}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        value = self.or_()
        if self.peek() is not None:
            raise CelError(f"unexpected {self.peek()[1]!r} in condition {self.text!r}")  # type: ignore[index]
        return value

    def or_(self) -> Any:
        value = self.and_()
        while self.peek() and self.peek()[1] == "||":  # type: ignore[index]
            self.take()
            right = self.and_()
            value = bool(value) or bool(right)
        return value

    def and_(self) -> Any:
        value = self.unary()
        while self.peek() and self.peek()[1] == "&&":  # type: ignore[index]
            self.take()
            right = self.unary()
            value = bool(value) and bool(right)
        return value

    def unary(self) -> Any:
        if self.peek() and self.peek()[1] == "!":  # type: ignore[index]
            self.take()
            return not bool(self.unary())
        return self.compare()

    def compare(self) -> Any:
        left = self.primary()
        tok = self.peek()
        if tok and tok[1] in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            right = self.primary()
            return False if self.dry else _compare(tok[1], left, right)
        return left

    def primary(self) -> Any:
        kind, value = self.take()
        if value == "(" and kind == "op":
            inner = self.or_()
            self.take(")")
            return self._index(inner)
        if kind == "num":
            return float(value) if any(c in value for c in ".eE") else int(value)
        if kind == "str":
            return json.loads('"' + value[1:-1].replace('"', '\\"').replace("\\'", "'") + '"')
        if kind == "name":
            if value in ("true", "false"):
                return value == "true"
            if value == "null":
                return None
            if value in _FUNCS and self.peek() and self.peek()[1] == "(":  # type: ignore[index]
                self.take("(")
                arg = self.or_()
                self.take(")")
                return self._index(None if self.dry else _FUNCS[value](arg))
            if value == "inputs.parameter_values":
                self.take("[")
                _, key = self.take()
                self.take("]")
                name = json.loads('"' + key[1:-1] + '"') if key[:1] in "'\"" else key
                if self.dry:
                    return self._index(None)
                if name not in self.params:
                    raise CelError(f"condition refers to unknown input {name!r}")
                return self._index(self.params[name])
        raise CelError(f"unsupported term {value!r} in condition {self.text!r}")

    def _index(self, value: Any) -> Any:
        while self.peek() and self.peek()[1] == "[":  # type: ignore[index]
            self.take("[")
            kind, key = self.take()
            self.take("]")
            k: Any = json.loads('"' + key[1:-1] + '"') if kind == "str" else int(key)
            value = None if self.dry else value[k]
        return value


def _compare(op: str, a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, str) or isinstance(b, (int, float)) and isinstance(a, str):
        try:  # parameters arrive as JSON values; a string-typed number compares as the number it spells
            a, b = float(a), float(b)
        except ValueError:
            a, b = str(a), str(b)
    if op == "==":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    try:
        return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])
    except TypeError as err:
        raise CelError(f"cannot compare {a!r} {op} {b!r}") from err


def evaluate(expression: str, parameters: dict[str, Any]) -> Any:
    """Evaluate a KFP trigger condition against the task's resolved input parameters."""
    return _Parser(expression, parameters).parse()


def check_syntax(expression: str) -> None:
    """Parse a condition without values (admission time): unsupported syntax raises, unknown inputs do not."""
    _Parser(expression, {}, dry=True).parse()
