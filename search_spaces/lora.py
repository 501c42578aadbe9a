"""LoRA (Hu et al.): ΔW = (alpha / r) · B A, A Kaiming-uniform, B zero."""
from __future__ import annotations

import torch
from torch import nn

from .base import Adapter, kaiming_uniform_
from .registry import register


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

    def delta_weight(self):
        return self.scale * (self.lora_B @ self.lora_A)
