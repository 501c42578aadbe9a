"""Config fields that carry their default and help once (as PEFT's config dataclasses do): the
CLIs build their flags from this metadata (nas/cli/flags.py)."""
from __future__ import annotations

import dataclasses


def option(default, help: str, **metadata):
    """A dataclass field with CLI metadata: ``help``, and optionally ``flags`` (the spellings,
    instead of ``--field-name``), ``aliases`` (more spellings), ``choices`` and ``type``."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _numbers(text: str, kind, example: str) -> tuple:
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of {kind.__name__}s, e.g. {example}") from None


def float_list(text: str) -> tuple[float, ...]:
    """'5e-4,1e-3' -> (0.0005, 0.001): the CLI type of a tuple-of-floats field."""
    return _numbers(text, float, "5e-4,1e-3")


def int_list(text: str) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2): seeds and the like."""
    return _numbers(text, int, "0,1,2")
