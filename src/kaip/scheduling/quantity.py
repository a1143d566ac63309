"""Kubernetes resource quantities (`500m`, `2`, `512Gi`, `1e3`) as exact integers of milli-units.

The scheduler adds and compares quantities millions of times, so they are plain ints: `2` CPUs is 2000,
`1Gi` of memory is 1073741824000. Milli-units keep `500m` exact without fractions.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation, localcontext

# Kubernetes' serialization format (apimachinery resource.Quantity): a signed decimal number, then a binary SI
# suffix, a decimal SI suffix, or a decimal exponent (`e`/`E` with a signed integer).
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
                       r"(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))?$")
# Beyond 10^±MAX_EXPONENT a quantity is refused as too large (or too precise) rather than expanded into an int
# of that many digits.
MAX_EXPONENT = 64
_MESSAGE = ("quantities must match the regular expression "
            "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": Decimal("1e3"),
    "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"), "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2 ** 10), "Mi": Decimal(2 ** 20), "Gi": Decimal(2 ** 30), "Ti": Decimal(2 ** 40),
    "Pi": Decimal(2 ** 50), "Ei": Decimal(2 ** 60),
}
MILLI = 1000


class QuantityError(ValueError):
    pass


def is_quantity(value: object) -> bool:
    try:
        parse_quantity(value)  # type: ignore[arg-type]
    except QuantityError:
        return False
    return True


def parse_quantity(value: str | int | float) -> int:
    """Milli-units of a quantity, rounded up as Kubernetes rounds requests (`1n` of CPU is `1m`)."""
    if isinstance(value, bool):
        raise QuantityError(_MESSAGE)
    if isinstance(value, int):
        return value * MILLI
    text = repr(value) if isinstance(value, float) else str(value).strip()
    m = _QUANTITY.match(text)
    if not m:
        raise QuantityError(_MESSAGE)
    number, suffix = m.group(1), m.group(2) or ""
    try:
        base = Decimal(number)
    except InvalidOperation as err:  # pragma: no cover - the regular expression already checked it
        raise QuantityError(str(err)) from err
    # `E` alone is exa and `Ei` exbi; only `e`/`E` followed by a number is an exponent (the CRD pattern allows a
    # fractional one, `1e1.5`).
    if suffix in _SUFFIX:
        scale = _SUFFIX[suffix]
    else:
        exponent = Decimal(suffix[1:])
        if abs(exponent) > MAX_EXPONENT:
            raise QuantityError(f"quantity out of range: the exponent of {text!r} is beyond ±{MAX_EXPONENT}")
        with localcontext() as ctx:
            ctx.prec = 100
            scale = Decimal(10) ** exponent
    with localcontext() as ctx:
        ctx.prec = 200
        milli = base * scale * MILLI
    whole = int(milli)
    return whole + 1 if milli > whole else whole


def format_quantity(milli: int, resource: str = "") -> str:
    """A readable quantity: whole units where exact, `m` otherwise; memory in binary units where exact."""
    if milli % MILLI:
        return f"{milli}m"
    units = milli // MILLI
    if resource == "memory" or resource.endswith("storage"):
        for suffix, size in (("Ti", 2 ** 40), ("Gi", 2 ** 30), ("Mi", 2 ** 20), ("Ki", 2 ** 10)):
            if units and units % size == 0:
                return f"{units // size}{suffix}"
    return str(units)
