"""One registry of adapter types: a new type is one file that calls ``register``."""
from __future__ import annotations

from typing import Any

from torch import nn

from .base import Adapter

ADAPTERS: dict[str, type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    if not cls.kind:
        raise ValueError(f"{cls.__name__} has no kind")
    ADAPTERS[cls.kind] = cls
    return cls


def adapter_class(kind: str) -> type[Adapter]:
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise ValueError(
            f"unknown adapter type {kind!r}; registered types: {sorted(ADAPTERS)}"
        ) from None


def make_adapter(kind: str, base_linear: nn.Module, **hparams: Any) -> Adapter:
    """Wrap a frozen base projection in the adapter named ``kind``."""
    return adapter_class(kind)(base_linear, **hparams)


def count_params(kind: str, d_in: int, d_out: int, **hparams: Any) -> int:
    """Exact trainable parameters of ``kind`` on a (d_in -> d_out) layer, without building it."""
    if kind == "off":
        return 0
    cls = adapter_class(kind)
    return cls.num_params(d_in, d_out, **cls.resolve_hparams(d_in, d_out, **hparams))
