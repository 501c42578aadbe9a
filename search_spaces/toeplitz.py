"""SURM symmetric-Toeplitz-product adapter: ΔW = scale · T(b) T(a), applied with FFTs.

``T(a)`` is the n × n symmetric Toeplitz matrix with first column (= first row) ``a``:
``T(a)[i, j] = a[|i - j|]`` (``scipy.linalg.toeplitz(a)``).  Each factor is applied by
embedding it into a circulant of size 2n whose first column is
``[a_0, ..., a_{n-1}, 0, a_{n-1}, ..., a_1]``: ``T(a) x = circ(a_ext)[x; 0][:n]``.

Rectangular layers follow the circulant adapter: ``n = max(d_in, d_out)``, the input is
zero-padded from d_in to n, both n × n factors are applied, and the output is truncated to
d_out, so ``ΔW = scale · (T(b) T(a))[:d_out, :d_in]`` with exactly ``2n`` parameters.

Init: ``a`` Kaiming-uniform (bound 1/sqrt(n)), ``b = 0``: ΔW = 0 at start while
dL/db = (Toeplitz correlation of the output gradient with T(a) x) is non-zero.

Hyper-parameters: ``scale`` (float, default 1.0).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Adapter, kaiming_uniform_
from .circulant import check_scale, fft_dtype
from .registry import register


def sym_toeplitz_embedding(a: torch.Tensor) -> torch.Tensor:
    """First column (length 2n) of the circulant that contains T(a) as its top-left block."""
    return torch.cat([a, a.new_zeros(1), a[1:].flip(-1)])


def sym_toeplitz_product_apply(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, d_out: int
) -> torch.Tensor:
    """(T(b) T(a))[:d_out, :d_in] applied to x (..., d_in), d_in <= n = len(a)."""
    n = a.shape[-1]
    ct = fft_dtype(x.dtype)
    fa = torch.fft.rfft(sym_toeplitz_embedding(a.to(ct)))
    fb = torch.fft.rfft(sym_toeplitz_embedding(b.to(ct)))
    # rfft with n=2n zero-pads x (from d_in) to length 2n: the circulant embedding input.
    u = torch.fft.irfft(torch.fft.rfft(x.to(ct), n=2 * n) * fa, n=2 * n)[..., :n]
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * n) * fb, n=2 * n)
    return y[..., :d_out].to(x.dtype)


@register
class SymToeplitzProduct(Adapter):
    kind = "toeplitz"
    hparam_defaults = {"scale": 1.0}

    @classmethod
    def resolve_hparams(cls, d_in, d_out, **hparams):
        hp = super().resolve_hparams(d_in, d_out, **hparams)
        check_scale(cls.kind, hp)
        return hp

    @classmethod
    def num_params(cls, d_in, d_out, **_):
        return 2 * max(d_in, d_out)

    def __init__(self, base: nn.Module, **hparams):
        super().__init__(base, **hparams)
        n = max(self.d_in, self.d_out)
        w = base.weight
        self.toep_a = nn.Parameter(torch.empty(n, dtype=w.dtype, device=w.device))
        self.toep_b = nn.Parameter(torch.zeros(n, dtype=w.dtype, device=w.device))
        kaiming_uniform_(self.toep_a, n)

    @property
    def scale(self) -> float:
        return self.hparams["scale"]

    def delta(self, x):
        return sym_toeplitz_product_apply(x, self.toep_a, self.toep_b, self.d_out)

    def delta_weight(self):
        # Applying the update to the identity costs O(d_in · n log n), less than the
        # O(n^3) dense product of the two Toeplitz factors.
        return self.dense_by_probe()
