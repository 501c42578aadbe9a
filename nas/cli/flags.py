"""argparse flags built from a config dataclass's fields: each field's metadata (nas.options.option)
gives the help, spellings and choices, and its default is the dataclass default, written once."""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing

_SCALARS = (int, float, str)


def _scalar_type(hint) -> type:
    """int / float / str out of ``int | None`` and the like."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint if hint in _SCALARS else str


def add_flags(group, cls, names: list[str], *, use_defaults: bool = True, underscores: bool = False) -> None:
    """Add ``--field-name`` (or the field's ``flags``, plus its ``aliases``) for each name.

    ``use_defaults=False``: a flag not given is None (more-train: the plan's value, then the
    dataclass default, applies); the help still shows the dataclass default.
    ``underscores``: ``--field_name`` too, the spelling of transformers' TrainingArguments.
    A bool field that defaults to True, or any bool with ``use_defaults=False`` (a plan's hint may
    have set it), gets ``--no-...`` as well.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in names:
        f = fields[name]
        md = f.metadata
        own = ["--" + name] * underscores + ["--" + name.replace("_", "-")]
        flags = list(dict.fromkeys(list(md.get("flags") or own) + list(md.get("aliases", ()))))
        help_text = md.get("help", "")
        if f.default is not None and f.default is not False:
            help_text += f" (default {str(f.default).replace('%', '%%')})"
        kw: dict = {"dest": name, "help": help_text}
        if hints[name] is bool:
            kw["action"] = argparse.BooleanOptionalAction if f.default or not use_defaults else "store_true"
        else:
            kw["type"] = md.get("type") or _scalar_type(hints[name])
            if "choices" in md:
                kw["choices"] = md["choices"]
        kw["default"] = f.default if use_defaults else None
        group.add_argument(*flags, **kw)

