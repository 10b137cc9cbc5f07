"""HCL numbers: arithmetic, signed zero, infinities and text, as upstream's cty does them.

cty keeps a number as a binary float of 512 bits (Go's ``big.Float``); we keep an exact
``int`` where both sides are integers and a 64-bit ``float`` otherwise
(docs/plan-language.md §3). Where the two models meet the edges, we follow cty, because
a plan must render here as it renders on an upstream guest:

- zero has a sign: ``-0``, ``0 * -1`` and ``0 / -1`` are negative zero and render as
  ``-0``; ``-0 == 0`` holds;
- ``x / 0`` is an infinity of the right sign (rendered ``+Inf`` / ``-Inf``); ``0 / 0``,
  ``inf - inf``, ``0 * inf`` and ``inf / inf`` are errors;
- ``x % 0`` is ``x``; otherwise ``x % y`` is ``x - y * trunc(x / y)`` (the sign of the
  dividend); a modulo with an infinity on either side is an error (cty fails or panics);
- a fraction renders in plain decimal, never with an exponent.

Where 64 bits and 512 bits give different digits (``1 / 3`` renders with 155 digits
upstream) or a result overflows 64 bits, we differ: §8 lists it.
"""

from __future__ import annotations

import math

from guest.contract.errors import Location
from guest.contract.plan.errors import PlanError

Number = int | float

_NAN_REASON = {
    "+": "infinity plus minus infinity has no value",
    "-": "infinity minus infinity has no value",
    "*": "zero times infinity has no value",
    "/": "zero divided by zero (or infinity by infinity) has no value",
}


def negate(x: Number) -> Number:
    """``-x``; ``-0`` is negative zero, as in cty."""
    return -float(x) if x == 0 else -x


def arithmetic(op: str, x: Number, y: Number, where: Location) -> Number:
    """``x op y`` for op in ``+ - * / %``."""
    if op == "%":
        return _modulo(x, y, where)
    if op == "/" and y == 0:
        if x == 0:
            raise PlanError(_NAN_REASON["/"], where)
        return math.copysign(math.inf, math.copysign(1.0, x) * math.copysign(1.0, y))
    if op == "/" and isinstance(x, int) and isinstance(y, int) and x % y == 0:
        result: Number = x // y
    elif op == "/":
        result = x / y
    else:
        result = x + y if op == "+" else x - y if op == "-" else x * y
    if result == 0:  # the sign of a zero, by IEEE's rules (which big.Float follows)
        return _float_op(op, float(x), float(y))
    return _checked(op, result, x, y, where)


def _float_op(op: str, x: float, y: float) -> float:
    return x + y if op == "+" else x - y if op == "-" else x * y if op == "*" else x / y


def _checked(op: str, result: Number, x: Number, y: Number, where: Location) -> Number:
    if isinstance(result, float) and math.isnan(result):
        raise PlanError(_NAN_REASON[op], where)
    if isinstance(result, float) and math.isinf(result) and math.isfinite(x) and math.isfinite(y):
        raise PlanError("number out of range", where)
    return result


def _modulo(x: Number, y: Number, where: Location) -> Number:
    if y == 0:
        return x
    if math.isinf(x) or math.isinf(y):
        raise PlanError("modulo with an infinity has no value", where)
    if isinstance(x, int) and isinstance(y, int):
        quotient = abs(x) // abs(y) * (1 if (x < 0) == (y < 0) else -1)  # truncated
        result: Number = x - y * quotient
    else:  # fmod is exact, as cty's 512-bit x - y * q is for 64-bit operands
        from fractions import Fraction  # rare: not worth its import on every start-up

        quotient = math.trunc(Fraction(x) / Fraction(y))
        result = math.fmod(x, y)
    if result == 0:
        return float(x) - float(y) * float(quotient)
    return result


def to_text(x: Number) -> str:
    """A number as HCL renders it into a string: ``-0``, ``+Inf``, ``2.5``, ``0.0000001``."""
    if isinstance(x, int):
        return str(x)
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x.is_integer():
        return "-0" if x == 0 and math.copysign(1.0, x) < 0 else str(int(x))
    from decimal import Decimal  # only fractions need it: kept off the start-up path

    return format(Decimal(repr(x)), "f")


def from_text(text: str) -> Number:
    """A string that holds a number (already matched), as cty converts it: ``"-0"`` is -0."""
    number = float(text)
    if number.is_integer() and "." not in text and "e" not in text.lower():
        return int(text) or (-0.0 if text.startswith("-") else 0)
    return number
