"""SURM circulant adapter (Sehanobish et al. 2024): ΔW = scale · circ(c), applied with FFTs.

``circ(c)`` is the n × n circulant whose first column is ``c``:
``circ(c)[i, j] = c[(i - j) mod n]`` (``scipy.linalg.circulant`` convention), so
``circ(c) x`` is the circular convolution ``irfft(rfft(x) * rfft(c))``.

Rectangular layers (the authors' code only handles square ones): with
``n = max(d_in, d_out)`` the input is zero-padded from d_in to n, the size-n circular
convolution is taken, and the output is truncated to its first d_out entries.  The dense
update is therefore the top-left block ``ΔW = scale · circ(c)[:d_out, :d_in]``, and the
adapter has exactly ``n`` trainable parameters.  Padding to max(d_in, d_out) (instead of,
say, tiling blocks) keeps one parameter vector per layer and makes every one of the n
parameters reach the output for both 384 -> 1536 and 1536 -> 384 projections.

Init: ``c = 0`` so ΔW = 0 at start; dL/dc = circular correlation of the output gradient
with the padded input, which is non-zero, so training moves off zero from the first step.

Hyper-parameters: ``scale`` (float, default 1.0), the factor on the update.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Adapter
from .registry import register


def check_scale(kind: str, hp: dict[str, Any]) -> None:
    """Validate and normalise the ``scale`` hyper-parameter in place (shared by SURM types)."""
    s = hp["scale"]
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
        raise ValueError(f"{kind}: scale must be a finite number such as 1.0, got {s!r}")
    hp["scale"] = float(s)


def check_rank(kind: str, hp: dict[str, Any], hi: int, why: str) -> None:
    """``rank`` must be an integer in [1, hi]; the message says what to pass instead."""
    r = hp["rank"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"{kind}: rank must be a positive integer (e.g. 2), got {r!r}")
    if r > hi:
        raise ValueError(f"{kind}: rank={r} exceeds {why}={hi}; pass rank <= {hi}")


def fft_dtype(dtype: torch.dtype) -> torch.dtype:
    """FFTs run in float32 for half / bfloat16 layers (torch has no general half FFT)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def pad_last(x: torch.Tensor, n: int) -> torch.Tensor:
    return F.pad(x, (0, n - x.shape[-1])) if x.shape[-1] < n else x


def circulant_apply(x: torch.Tensor, c: torch.Tensor, d_out: int) -> torch.Tensor:
    """circ(c)[:d_out, :d_in] applied to x (..., d_in) with n = len(c) >= d_in."""
    n = c.shape[-1]
    ct = fft_dtype(x.dtype)
    xf = torch.fft.rfft(x.to(ct), n=n)
    y = torch.fft.irfft(xf * torch.fft.rfft(c.to(ct), n=n), n=n)
    return y[..., :d_out].to(x.dtype)


def circulant_dense(c: torch.Tensor) -> torch.Tensor:
    """The n × n circulant with first column c, built by indexing (no FFT round-off)."""
    n = c.shape[-1]
    i = torch.arange(n, device=c.device)
    return c[..., (i[:, None] - i[None, :]) % n]


@register
class Circulant(Adapter):
    kind = "circulant"
    hparam_defaults = {"scale": 1.0}

    @classmethod
    def resolve_hparams(cls, d_in, d_out, **hparams):
        hp = super().resolve_hparams(d_in, d_out, **hparams)
        check_scale(cls.kind, hp)
        return hp

    @classmethod
    def num_params(cls, d_in, d_out, **_):
        return max(d_in, d_out)

    def __init__(self, base: nn.Module, **hparams):
        super().__init__(base, **hparams)
        n = max(self.d_in, self.d_out)
        w = base.weight
        self.circ_c = nn.Parameter(torch.zeros(n, dtype=w.dtype, device=w.device))

    @property
    def scale(self) -> float:
        return self.hparams["scale"]

    def delta(self, x):
        return circulant_apply(x, self.circ_c, self.d_out)

    def delta_weight(self):
        return self.scale * circulant_dense(self.circ_c)[: self.d_out, : self.d_in]
