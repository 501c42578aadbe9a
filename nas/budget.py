"""Trainable-parameter budgets: ``0.1%`` of the base model or an absolute count (``200k``).

The budget counts adapter and shortcut parameters only.  The task head is trainable in every
method (ours and PEFT's alike) and is reported separately, never counted against the budget;
percentages are of the base model's parameters without its task head.
"""
from __future__ import annotations

import re

from .errors import UserError

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(%|[kKmMbB])?\s*$")


def parse_budget(spec: str | int, base_params: int | None = None) -> int:
    """'0.1%' -> 0.1% of base_params; '200k', '1.5M', '50000' -> that count."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        value, unit = float(spec), ""
    else:
        m = _PATTERN.match(str(spec))
        if not m:
            raise UserError(
                f"budget {spec!r} is not understood; write a percentage of the base model "
                f"('0.1%') or a parameter count ('200k', '1.5M', '50000')"
            )
        value, unit = float(m.group(1)), (m.group(2) or "").lower()
    if unit == "%":
        if base_params is None:
            raise UserError("a percentage budget needs the base model's parameter count")
        if not 0 < value <= 100:
            raise UserError(f"budget {spec!r}: a percentage must be in (0, 100]")
        count = int(base_params * value / 100)
    else:
        count = int(value * _SUFFIX[unit])
    if count < 1:
        raise UserError(f"budget {spec!r} allows no trainable parameter; give a larger budget")
    return count
