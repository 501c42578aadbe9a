"""The adapter contract every type in the registry implements.

An adapter wraps one frozen base projection (``nn.Linear`` or GPT-2's ``Conv1D``) and
adds a trainable structured update: ``y = base(x) + scale * delta(x)``.  The verbs are
minLoRA's: ``merge`` folds the update into the base weight, ``unmerge`` takes it out
again, and ``enabled = False`` makes the layer exactly the base layer (the off state).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn


def base_shape(base: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a Linear or a GPT-2 style Conv1D (weight stored as (d_in, d_out))."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if type(base).__name__ == "Conv1D" and hasattr(base, "nf"):
        return base.weight.shape[0], base.nf
    raise TypeError(f"cannot adapt {type(base).__name__}: expected nn.Linear or Conv1D")


def is_conv1d(base: nn.Module) -> bool:
    return type(base).__name__ == "Conv1D" and not isinstance(base, nn.Linear)


def kaiming_uniform_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    """Kaiming-uniform with a=sqrt(5), as nn.Linear and LoRA's A: bound 1/sqrt(fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        return t.uniform_(-bound, bound)


class Adapter(nn.Module):
    """Base class: subclasses define ``delta(x)``, ``delta_weight()`` and ``num_params``.

    Subclasses set ``kind`` (the registry name) and ``hparam_defaults``; the hyper-parameters
    they are built with are kept in ``self.hparams`` so a plan can round-trip them.
    """

    kind: ClassVar[str] = ""
    hparam_defaults: ClassVar[dict[str, Any]] = {}
    # Whether dense(ΔW) can be folded into the base weight (every type here can).
    mergeable: ClassVar[bool] = True

    def __init__(self, base: nn.Module, **hparams: Any):
        super().__init__()
        self.base = base
        self.d_in, self.d_out = base_shape(base)
        self.hparams = self.resolve_hparams(self.d_in, self.d_out, **hparams)
        self.enabled = True
        self.merged = False
        for p in base.parameters():
            p.requires_grad_(False)

    # ---- hyper-parameters -------------------------------------------------------------
    @classmethod
    def resolve_hparams(cls, d_in: int, d_out: int, **hparams: Any) -> dict[str, Any]:
        """Fill defaults and check values; raises ValueError naming the bad value."""
        unknown = set(hparams) - set(cls.hparam_defaults)
        if unknown:
            raise ValueError(
                f"{cls.kind}: unknown hyper-parameter(s) {sorted(unknown)}; "
                f"valid: {sorted(cls.hparam_defaults)}"
            )
        return {**cls.hparam_defaults, **hparams}

    @classmethod
    def num_params(cls, d_in: int, d_out: int, **hparams: Any) -> int:
        """Exact trainable-parameter count from shapes alone (no module is built)."""
        raise NotImplementedError

    # ---- the update ---------------------------------------------------------------------
    @property
    def scale(self) -> float:
        return 1.0

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The unscaled update applied to x: (..., d_in) -> (..., d_out)."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """Dense scaled ΔW of shape (d_out, d_in), so that y = base(x) + x @ ΔW.T."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.enabled and not self.merged:
            d = self.delta(x.to(self.dtype))
            # Most structured types run at scale 1: skip a full pass over the output then.
            y = y + (d if self.scale == 1.0 else self.scale * d)
        return y

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters(recurse=False)).dtype

    def dense_by_probe(self) -> torch.Tensor:
        """ΔW computed by applying the update to the identity: the generic dense form."""
        eye = torch.eye(self.d_in, dtype=self.dtype, device=self.device)
        return (self.scale * self.delta(eye)).T

    @property
    def device(self) -> torch.device:
        return next(self.parameters(recurse=False)).device

    # ---- verbs ----------------------------------------------------------------------------
    @torch.no_grad()
    def _add_to_base(self, sign: float) -> None:
        dw = self.delta_weight().to(self.base.weight.dtype)
        if is_conv1d(self.base):
            dw = dw.T
        self.base.weight.add_(sign * dw)

    def merge(self) -> None:
        """Fold the update into the base weight; forward stays the same function."""
        if not self.merged and self.enabled:
            self._add_to_base(+1.0)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self._add_to_base(-1.0)
            self.merged = False

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters(recurse=False))

    def extra_repr(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in self.hparams.items())
        return f"kind={self.kind}, d_in={self.d_in}, d_out={self.d_out}, {hp}, enabled={self.enabled}"
