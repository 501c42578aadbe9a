"""Config fields that carry their default and help once (as PEFT's config dataclasses do): the
CLIs build their flags from this metadata (nas/cli/flags.py)."""
from __future__ import annotations

import dataclasses


def option(default, help: str, **metadata):
    """A dataclass field with CLI metadata: ``help``, and optionally ``flags`` (the spellings,
    instead of ``--field-name``), ``aliases`` (more spellings), ``choices`` and ``type``."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})
