"""LoRA (Hu et al.): ΔW = (alpha / r) · B A, A Kaiming-uniform, B zero."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Adapter, kaiming_uniform_
from .registry import register


def add_low_rank(y: torch.Tensor, h: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``y + h @ right.T`` as one ``addmm``: (..., d_out) + (..., k) @ (k, d_out).

    Fusing the add saves a full (tokens x d_out) pass forward, and autograd's addmm backward
    computes ``right``'s gradient as ``h.T @ g``, a (k x T)(T x d_out) product, much faster on
    CPU than the (d_out x T)(T x k) one ``F.linear(h, right)`` would use.
    """
    if y.dtype != h.dtype or y.device != h.device:
        return y + (h @ right.T).to(y.dtype)
    shape = y.shape
    out = torch.addmm(y.reshape(-1, shape[-1]), h.reshape(-1, h.shape[-1]), right.T)
    return out.view(shape)


@register
class LoRA(Adapter):
    kind = "lora"
    hparam_defaults = {"rank": 8, "alpha": None}  # alpha None -> alpha = 2 * rank (scale 2)

    @classmethod
    def resolve_hparams(cls, d_in, d_out, **hparams):
        hp = super().resolve_hparams(d_in, d_out, **hparams)
        if not isinstance(hp["rank"], int) or hp["rank"] < 1:
            raise ValueError(f"lora: rank must be a positive integer, got {hp['rank']!r}")
        if hp["alpha"] is None:
            hp["alpha"] = 2.0 * hp["rank"]
        hp["alpha"] = float(hp["alpha"])
        return hp

    @classmethod
    def num_params(cls, d_in, d_out, rank, **_):
        return rank * (d_in + d_out)

    def __init__(self, base: nn.Module, **hparams):
        super().__init__(base, **hparams)
        r = self.hparams["rank"]
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, self.d_in, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(self.d_out, r, dtype=w.dtype, device=w.device))
        kaiming_uniform_(self.lora_A, self.d_in)

    @property
    def scale(self) -> float:
        return self.hparams["alpha"] / self.hparams["rank"]

    def delta(self, x):
        return (x @ self.lora_A.T) @ self.lora_B.T

    def forward(self, x):
        # Same function as Adapter.forward (base + scale * B A x), computed faster: the scale
        # goes on the rank-r activations, and the add into the second matmul.  F.linear for A
        # makes A's gradient g_h.T @ x, an (r x T)(T x d_in) product (the fast layout on CPU).
        y = self.base(x)
        if not self.enabled or self.merged:
            return y
        h = F.linear(x.to(self.lora_A.dtype), self.lora_A) * self.scale
        return add_low_rank(y, h, self.lora_B)

    def delta_weight(self):
        return self.scale * (self.lora_B @ self.lora_A)
