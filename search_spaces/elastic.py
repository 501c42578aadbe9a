"""Weight-sharing super-adapter for one projection (elastic adapters as in LoNAS / Shears / SQFT).

``ElasticLinear`` wraps one frozen projection and holds every candidate choice of the search
space for it at once; ``activate(choice)`` picks the one that the next forwards use (or none:
the base layer).  Ranks are nested where the type allows (LoRA ranks, MoRe block ranks at one
block count, LDR displacement ranks): every rank of a *slot* uses the leading rows/columns of
one tensor set, so rank 2 trains the slice that rank 8 starts with.  Other types get one tensor
set per distinct shape.  The forward runs the registry's own adapter class on the bound slices
(scale alpha/r of the active rank included), so ``extract(choice)`` -- a standalone adapter
carrying the same weights -- computes exactly what the super-adapter computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .base import Adapter, base_shape
from .registry import adapter_class, make_adapter

# Nested types: the hyper-parameter that nests and, per parameter, the dimension it slices.
NESTED: dict[str, tuple[str, dict[str, int]]] = {
    "lora": ("rank", {"lora_A": 0, "lora_B": 1}),
    "more": ("rank", {"blkdiag1": 1, "blkdiag2": 2}),
    "ldr": ("rank", {"ldr_c": 0, "ldr_s": 0}),
}
# Hyper-parameters that scale the update without changing any tensor's shape.
SCALE_HPARAMS = frozenset({"alpha", "scale"})
# Keys a plan's choice may carry that are not hyper-parameters.
NON_HPARAMS = frozenset({"type", "enabled"})

ChoiceKey = tuple  # (kind, ((hparam, value), ...)) with the hyper-parameters resolved


def split_choice(choice: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if not isinstance(choice, dict) or "type" not in choice:
        raise ValueError(f"a choice is a dict with a 'type', e.g. {{'type': 'lora', 'rank': 4}}; "
                         f"got {choice!r}")
    return choice["type"], {k: v for k, v in choice.items() if k not in NON_HPARAMS}


def slot_name(kind: str, hp: dict[str, Any]) -> str:
    """The tensor set a choice uses: the kind plus every shape-setting, non-nested value."""
    nested = NESTED.get(kind, (None, {}))[0]
    parts = [kind] + [f"{k}{v}" for k, v in sorted(hp.items())
                      if k != nested and k not in SCALE_HPARAMS and v is not None]
    return "_".join(parts).replace(".", "p")


@dataclass
class Member:
    """One choice of an ElasticLinear: its standalone adapter and where its tensors live."""

    kind: str
    hparams: dict[str, Any]
    adapter: Adapter  # parameters re-bound to slices of the slot before every forward
    slot: str
    sizes: dict[str, tuple[int, int] | None]  # param -> (dim, length) of its slice; None: whole


class ElasticLinear(nn.Module):
    """Every candidate choice of one projection, with nested ranks sharing storage."""

    def __init__(self, base: nn.Module, choices: list[dict[str, Any]]):
        super().__init__()
        self.base = base
        self.d_in, self.d_out = base_shape(base)
        for p in base.parameters():
            p.requires_grad_(False)
        self.slots = nn.ModuleDict()
        self._members: dict[ChoiceKey, Member] = {}  # a plain dict: not registered submodules
        self._active: Member | None = None
        resolved: dict[ChoiceKey, tuple[str, dict]] = {}
        for choice in choices:
            kind, hp = split_choice(choice)
            hp = adapter_class(kind).resolve_hparams(self.d_in, self.d_out, **hp)
            resolved.setdefault(self.key(kind, hp), (kind, hp))
        by_slot: dict[str, list[tuple[str, dict]]] = {}
        for kind, hp in resolved.values():
            by_slot.setdefault(slot_name(kind, hp), []).append((kind, hp))
        for slot, items in by_slot.items():
            self._build_slot(slot, items)

    @staticmethod
    def key(kind: str, hp: dict[str, Any]) -> ChoiceKey:
        return kind, tuple(sorted(hp.items()))

    def _build_slot(self, slot: str, items: list[tuple[str, dict]]) -> None:
        kind = items[0][0]
        nested, dims = NESTED.get(kind, (None, {}))
        # The host is the largest member; its freshly initialised tensors become the slot's.
        host_kind, host_hp = max(items, key=lambda it: it[1][nested]) if nested else items[0]
        host = make_adapter(host_kind, self.base, **host_hp)
        self.slots[slot] = nn.ParameterDict(dict(host.named_parameters(recurse=False)))
        for k, hp in items:
            adapter = host if hp is host_hp else make_adapter(k, self.base, **hp)
            sizes = {name: ((dims[name], hp[nested]) if name in dims else None)
                     for name, _ in adapter.named_parameters(recurse=False)}
            m = Member(k, hp, adapter, slot, sizes)
            views = self.tensors(m)  # must have exactly the shapes the adapter built for itself
            if any(views[n].shape != p.shape for n, p in adapter.named_parameters(recurse=False)):
                raise ValueError(f"{k} {hp}: its tensors are not slices of slot {slot}'s; "
                                 f"fix NESTED for {k!r}")
            self._members[self.key(k, hp)] = m
            self._unbind(m)  # drop the member's own fresh tensors

    # ---- choosing ------------------------------------------------------------------------------
    def member(self, choice: dict[str, Any]) -> Member:
        kind, hp = split_choice(choice)
        try:
            key = self.key(kind, adapter_class(kind).resolve_hparams(self.d_in, self.d_out, **hp))
        except ValueError as e:
            raise ValueError(f"choice {choice!r} does not fit this layer: {e}") from None
        if key not in self._members:
            raise ValueError(f"choice {choice!r} is not in this super-adapter; its choices: "
                             f"{[m.adapter.hparams | {'type': m.kind} for m in self.members]}")
        return self._members[key]

    @property
    def members(self) -> list[Member]:
        return list(self._members.values())

    def activate(self, choice: dict[str, Any] | None) -> None:
        """Use ``choice`` (a dict with 'type') in the next forwards; None: the base layer only."""
        self._active = None if choice is None else self.member(choice)

    @property
    def active(self) -> Member | None:
        return self._active

    # ---- tensors -------------------------------------------------------------------------------
    def tensors(self, m: Member) -> dict[str, torch.Tensor]:
        """The member's parameters as views of the slot's (differentiable, storage shared)."""
        out = {}
        for name, size in m.sizes.items():
            t = self.slots[m.slot][name]
            out[name] = t if size is None else t.narrow(size[0], 0, size[1])
        return out

    def _bind(self, m: Member) -> None:
        # Plain tensors in _parameters: the adapter's own forward (and .dtype) read them as its
        # parameters, while autograd sends their gradients into the slot's tensors.
        m.adapter._parameters.update(self.tensors(m))

    def _unbind(self, m: Member) -> None:
        # Views are not kept between forwards: a module holding non-leaf tensors could not
        # be deep-copied or pickled.
        for name, size in m.sizes.items():
            m.adapter._parameters[name] = self.slots[m.slot][name] if size is None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self._active
        if m is None:
            return self.base(x)
        self._bind(m)
        try:
            return m.adapter(x)
        finally:
            self._unbind(m)

    def extract(self, choice: dict[str, Any], copy: bool = True) -> Adapter:
        """A standalone registry adapter on the same base with this choice's weights.

        ``copy=True`` clones them (train it without touching the super-adapter); ``False``
        makes its parameters views of the slot (same storage: updates show in both).
        """
        m = self.member(choice)
        adapter = make_adapter(m.kind, self.base, **m.hparams)
        for name, t in self.tensors(m).items():
            t = t.detach()
            adapter._parameters[name] = nn.Parameter(t.clone() if copy else t)
        return adapter

    def num_params(self) -> int:
        return sum(p.numel() for p in self.slots.parameters())

    def extra_repr(self) -> str:
        return (f"d_in={self.d_in}, d_out={self.d_out}, slots={list(self.slots)}, "
                f"choices={len(self._members)}, params={self.num_params()}")
