"""SURM low-displacement-rank adapter: ΔW = scale · Σ_{i<k} circ(c_i) skewcirc(s_i).

``circ(c)[i, j] = c[(i - j) mod n]`` (see circulant.py).  ``skewcirc(s)`` is the
skew-circulant with first column ``s``: ``S[i, j] = s[i - j]`` for i >= j and
``-s[n + i - j]`` for i < j (first row ``[s_0, -s_{n-1}, ..., -s_1]``), so ``S x`` is the
negacyclic convolution of s and x.  It is computed as a linear convolution of size 2n by
FFT, ``l = irfft(rfft(x, 2n) · rfft(s, 2n))``, folded as ``(S x)[i] = l[i] - l[i + n]``.
The k circulant products are summed in the frequency domain, so one inverse FFT remains.
All k terms run batched (no Python loop over them).

Rectangular layers follow the circulant adapter: ``n = max(d_in, d_out)``, the input is
zero-padded from d_in to n and the output truncated to d_out, so
``ΔW = scale · (Σ circ(c_i) skewcirc(s_i))[:d_out, :d_in]`` with exactly ``2·k·n``
parameters (``ldr_c`` and ``ldr_s``, each k × n).

Init: ``s_i`` Kaiming-uniform (bound 1/sqrt(n)), ``c_i = 0``: ΔW = 0 at start, dL/dc_i is
non-zero.

Hyper-parameters: ``rank`` (displacement rank k, default 2; 1 <= k <= n, since an n × n
matrix has displacement rank at most n), ``scale`` (float, default 1.0).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Adapter, kaiming_uniform_
from .circulant import check_rank, check_scale, fft_dtype
from .registry import register


def ldr_apply(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, d_out: int) -> torch.Tensor:
    """(Σ_i circ(c_i) skewcirc(s_i))[:d_out, :d_in] applied to x (..., d_in); c, s: (k, n)."""
    n = c.shape[-1]
    ct = fft_dtype(x.dtype)
    # Skew-circulant products for all k at once: (..., 1, n+1) * (k, n+1) -> (..., k, 2n).
    xf = torch.fft.rfft(x.to(ct), n=2 * n).unsqueeze(-2)
    lin = torch.fft.irfft(xf * torch.fft.rfft(s.to(ct), n=2 * n), n=2 * n)
    u = lin[..., :n] - lin[..., n:]
    # Circulant products, summed over k in the frequency domain.
    yf = (torch.fft.rfft(u, n=n) * torch.fft.rfft(c.to(ct), n=n)).sum(-2)
    y = torch.fft.irfft(yf, n=n)
    return y[..., :d_out].to(x.dtype)


@register
class LDR(Adapter):
    kind = "ldr"
    hparam_defaults = {"rank": 2, "scale": 1.0}

    @classmethod
    def resolve_hparams(cls, d_in, d_out, **hparams):
        hp = super().resolve_hparams(d_in, d_out, **hparams)
        check_rank(cls.kind, hp, max(d_in, d_out), "n = max(d_in, d_out)")
        check_scale(cls.kind, hp)
        return hp

    @classmethod
    def num_params(cls, d_in, d_out, rank, **_):
        return 2 * rank * max(d_in, d_out)

    def __init__(self, base: nn.Module, **hparams):
        super().__init__(base, **hparams)
        k = self.hparams["rank"]
        n = max(self.d_in, self.d_out)
        w = base.weight
        self.ldr_c = nn.Parameter(torch.zeros(k, n, dtype=w.dtype, device=w.device))
        self.ldr_s = nn.Parameter(torch.empty(k, n, dtype=w.dtype, device=w.device))
        kaiming_uniform_(self.ldr_s, n)

    @property
    def scale(self) -> float:
        return self.hparams["scale"]

    def delta(self, x):
        return ldr_apply(x, self.ldr_c, self.ldr_s, self.d_out)

    def delta_weight(self, chunk: int = 1024):
        # Apply the update to the identity in row chunks: O(k · d_in · n log n) work and
        # O(chunk · k · n) memory, instead of k dense n × n products.
        eye = torch.eye(self.d_in, dtype=self.dtype, device=self.device)
        cols = [self.delta(eye[i : i + chunk]) for i in range(0, self.d_in, chunk)]
        return (self.scale * torch.cat(cols)).T
