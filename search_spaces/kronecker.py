"""SURM Kronecker adapter: ΔW = scale · kron(B, A), applied without the dense matrix.

With ``r = rank``, ``p = ceil(d_in / r)`` and ``q = ceil(d_out / r)``:
``A`` is (r × p) and ``B`` is (q × r), so ``kron(B, A)`` is (q·r × r·p) and
``kron(B, A)[i1·r + i2, j1·p + j2] = B[i1, j1] · A[i2, j2]``.

Per token, x is zero-padded to r·p and viewed row-major as X (r × p); then
``kron(B, A) x = vec(B X Aᵀ)`` (row-major, q × r), truncated to d_out.  When r divides
d_in and d_out there is no padding; otherwise ``ΔW = scale · kron(B, A)[:d_out, :d_in]``.
Parameters: ``r·p + q·r`` (≈ d_in + d_out whatever r is); rank(ΔW) <= min(q, r)·min(r, p).

Init: ``A`` Kaiming-uniform (bound 1/sqrt(p)), ``B = 0`` (as LoRA), so ΔW = 0 at start and
dL/dB is non-zero.

Hyper-parameters: ``rank`` (int r, default 8; 1 <= r <= min(d_in, d_out)),
``scale`` (float, default 1.0).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Adapter, kaiming_uniform_
from .circulant import check_rank, check_scale, pad_last
from .registry import register


def kron_sizes(d_in: int, d_out: int, rank: int) -> tuple[int, int]:
    return math.ceil(d_in / rank), math.ceil(d_out / rank)


def kron_apply(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, d_out: int) -> torch.Tensor:
    """kron(B, A)[:d_out, :d_in] applied to x (..., d_in) as B X Aᵀ per token."""
    r, p = A.shape
    lead = x.shape[:-1]
    X = pad_last(x.reshape(-1, x.shape[-1]), r * p).view(-1, r, p)
    # X Aᵀ first, as one (T·r, p) @ (p, r) GEMM: r·r·(p + q) flops per token, not 2·q·p·r.
    Z = X @ A.T  # (T, r_j1, r_i2)
    # Then B Z, as one (q, r) @ (r, T·r) GEMM (B shared by all tokens, not broadcast).
    Y = torch.einsum("aj,tjb->tab", B, Z)  # (T, q, r)
    return Y.reshape(-1, B.shape[0] * r)[:, :d_out].reshape(*lead, d_out)


@register
class Kronecker(Adapter):
    kind = "kronecker"
    hparam_defaults = {"rank": 8, "scale": 1.0}

    @classmethod
    def resolve_hparams(cls, d_in, d_out, **hparams):
        hp = super().resolve_hparams(d_in, d_out, **hparams)
        check_rank(cls.kind, hp, min(d_in, d_out), "min(d_in, d_out)")
        check_scale(cls.kind, hp)
        return hp

    @classmethod
    def num_params(cls, d_in, d_out, rank, **_):
        p, q = kron_sizes(d_in, d_out, rank)
        return rank * p + q * rank

    def __init__(self, base: nn.Module, **hparams):
        super().__init__(base, **hparams)
        r = self.hparams["rank"]
        p, q = kron_sizes(self.d_in, self.d_out, r)
        w = base.weight
        self.kron_A = nn.Parameter(torch.empty(r, p, dtype=w.dtype, device=w.device))
        self.kron_B = nn.Parameter(torch.zeros(q, r, dtype=w.dtype, device=w.device))
        kaiming_uniform_(self.kron_A, p)

    @property
    def scale(self) -> float:
        return self.hparams["scale"]

    def delta(self, x):
        return kron_apply(x, self.kron_A, self.kron_B, self.d_out)

    def delta_weight(self):
        return self.scale * torch.kron(self.kron_B, self.kron_A)[: self.d_out, : self.d_in]
