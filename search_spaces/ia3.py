"""(IA)^3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning"): a learned vector rescales a projection's activations.

``side="out"`` (keys and values in the paper) rescales the output features of ``W x``:
``y = W x ⊙ (1 + s) + b``; ``side="in"`` (the feed-forward down projection in the paper, whose
input is the rescaled MLP activation) rescales the input features: ``y = W (x ⊙ (1 + s)) + b``.
So ``ΔW = diag(s) W`` or ``W diag(s)``: a linear update, merged by rescaling W's rows or columns.
The paper rescales the output's bias too; here the bias stays as it is, so that the update is a
ΔW, linear in x, as for every type here (merging, the proxies and the dense form rely on it).

``s`` starts at 0 (the layer starts as the base); d_out (or d_in) trainable parameters: the
cheapest type here, for budgets where LoRA rank 1 on every module does not fit.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Adapter, is_conv1d
from .registry import register

SIDES = ("out", "in")


@register
class IA3(Adapter):
    kind = "ia3"
    hparam_defaults = {"side": "out"}

    @classmethod
    def resolve_hparams(cls, d_in, d_out, **hparams):
        hp = super().resolve_hparams(d_in, d_out, **hparams)
        if hp["side"] not in SIDES:
            raise ValueError(f"ia3: side must be one of {SIDES} (output or input features), got {hp['side']!r}")
        return hp

    @classmethod
    def num_params(cls, d_in, d_out, side, **_):
        return d_out if side == "out" else d_in

    def __init__(self, base: nn.Module, **hparams):
        super().__init__(base, **hparams)
        w = base.weight
        n = self.num_params(self.d_in, self.d_out, **self.hparams)
        self.ia3_s = nn.Parameter(torch.zeros(n, dtype=w.dtype, device=w.device))

    @property
    def out(self) -> bool:
        return self.hparams["side"] == "out"

    def _weight(self) -> torch.Tensor:
        """The base weight as (d_out, d_in), whatever the layer type stores."""
        w = self.base.weight
        return w.T if is_conv1d(self.base) else w

    def delta(self, x):
        w = self._weight().to(x.dtype)
        return (x @ w.T) * self.ia3_s if self.out else (x * self.ia3_s) @ w.T

    def delta_weight(self):
        w, s = self._weight(), self.ia3_s
        return s[:, None] * w if self.out else w * s[None, :]

    def forward(self, x):
        if not self.enabled or self.merged:
            return self.base(x)
        if not self.out:  # one matmul: the base layer on the rescaled input
            return self.base(x * (1 + self.ia3_s).to(x.dtype))
        y = self.base(x)
        b = self.base.bias
        wx = y if b is None else y - b
        return y + wx * self.ia3_s.to(y.dtype)

    # A multiplicative update: merge rescales W, unmerge divides the same factor back out.
    @torch.no_grad()
    def _add_to_base(self, sign: float) -> None:
        f = (1 + self.ia3_s).to(self.base.weight.dtype)
        f = f if sign > 0 else 1 / f
        w = self._weight()  # a view: rescaling it rescales the stored weight
        w.mul_(f[:, None] if self.out else f[None, :])
