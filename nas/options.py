"""Config fields that carry their default and help once (as PEFT's config dataclasses do): the
CLIs build their flags from this metadata (nas/cli/flags.py)."""
from __future__ import annotations

import dataclasses


def option(default, help: str, **metadata):
    """A dataclass field with CLI metadata: ``help``, and optionally ``flags`` (the spellings,
    instead of ``--field-name``), ``aliases`` (more spellings), ``choices`` and ``type``."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def float_list(text: str) -> tuple[float, ...]:
    """'5e-4,1e-3' -> (0.0005, 0.001): the CLI type of a tuple-of-floats field."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of numbers, e.g. 5e-4,1e-3") from None
