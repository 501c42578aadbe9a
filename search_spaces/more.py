"""MoRe (Tan et al. 2024): a Monarch-rectangular update M = P_out · L2 · P_mid · L1 · pad.

Shapes follow the authors' ``MonarchLinear`` so their checkpoints load by name:
``blkdiag1`` (N, r, p) and ``blkdiag2`` (N, q, r) with p = ceil(d_in / N) and
q = ceil(p · d_out / d_in).  Any d_in, d_out works: the input is zero-padded to N·p and the
output truncated from N·q to d_out.  With N = 1 the update is exactly LoRA's B A.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Adapter, kaiming_uniform_
from .lora import add_low_rank
from .registry import register

# Up to this N·r the forward uses the two dense factors below (a rank-N·r LoRA-shaped product);
# above it, the block-wise bmm path of ``monarch_apply`` does fewer flops.  Measured on CPU
# (d = 768, 4096 tokens, fwd+bwd): dense is faster at N·r = 32, even at 64, slower from 128.
DENSE_MAX_RANK = 48


def more_block_sizes(d_in: int, d_out: int, nblocks: int) -> tuple[int, int]:
    p = math.ceil(d_in / nblocks)
    q = math.ceil(p * d_out / d_in)
    return p, q


def monarch_apply(x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor, d_out: int):
    """Apply the Monarch product to x (..., d_in) with batched matmuls (no loop over blocks)."""
    n, r, p = blkdiag1.shape
    q = blkdiag2.shape[1]
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])
    if x.shape[-1] < n * p:
        x = F.pad(x, (0, n * p - x.shape[-1]))
    # Step 2: per-block projection, (n, T, p) @ (n, p, r) -> (n, T, r).
    v = torch.bmm(x.view(-1, n, p).transpose(0, 1), blkdiag1.transpose(1, 2))
    # Step 3: block-major v[k*r + j] viewed as (r, n) row-major; column l feeds block l.
    # v is (k, T, j); flat index k*r+j = a*n+l  ->  z[l, T, a].
    z = v.transpose(0, 1).reshape(-1, r, n).permute(2, 0, 1)
    # Step 4: (n, T, r) @ (n, r, q) -> (n, T, q).
    w = torch.bmm(z, blkdiag2.transpose(1, 2))
    # Step 5: out[s*n + l] = w[l, T, s]; truncate to d_out.
    out = w.permute(1, 2, 0).reshape(-1, q * n)[:, :d_out]
    return out.reshape(*lead, d_out)


def monarch_factors(blkdiag1: torch.Tensor, blkdiag2: torch.Tensor, d_in: int, d_out: int):
    """The Monarch product as two dense factors: M = M2 @ M1 with M1 (N·r, d_in), M2 (d_out, N·r).

    M1 is the block diagonal of L1 (step 2; padded input columns dropped):
    ``M1[k·r + j, k·p + i] = L1[k, j, i]``.  M2 folds steps 3-5 into one matrix: the middle
    permutation sends v[a·N + l] to block l, the output interleave puts w_l[s] at s·N + l, so
    ``M2[s·N + l, a·N + l] = L2[l, s, a]`` (rows truncated to d_out).  Both are built with
    ``diag_embed`` (differentiable, no copies of activations).
    """
    n, r, p = blkdiag1.shape
    q = blkdiag2.shape[1]
    # (r, p, N)[j, i, k] -> (N, r, N, p)[k, j, k', i], zero unless k == k'
    m1 = torch.diag_embed(blkdiag1.permute(1, 2, 0), dim1=0, dim2=2).reshape(n * r, n * p)
    # (q, r, N)[s, a, l] -> (q, N, r, N)[s, l, a, l'], zero unless l == l'
    m2 = torch.diag_embed(blkdiag2.permute(1, 2, 0), dim1=1, dim2=3).reshape(q * n, r * n)
    return m1[:, :d_in], m2[:d_out]


@register
class MoRe(Adapter):
    kind = "more"
    hparam_defaults = {"nblocks": 4, "rank": 4, "block_size": None}

    @classmethod
    def resolve_hparams(cls, d_in, d_out, **hparams):
        hp = super().resolve_hparams(d_in, d_out, **hparams)
        if hp["block_size"] is not None:
            bs = hp["block_size"]
            if not isinstance(bs, int) or bs < 1:
                raise ValueError(f"more: block_size must be a positive integer, got {bs!r}")
            nb = math.ceil(d_in / bs)
            if "nblocks" in hparams and hparams["nblocks"] != nb:
                raise ValueError(
                    f"more: nblocks={hparams['nblocks']} contradicts block_size={bs} "
                    f"(d_in={d_in} gives nblocks={nb}); give one of them"
                )
            hp["nblocks"] = nb
        for name in ("nblocks", "rank"):
            if not isinstance(hp[name], int) or hp[name] < 1:
                raise ValueError(f"more: {name} must be a positive integer, got {hp[name]!r}")
        if hp["nblocks"] > d_in:
            raise ValueError(f"more: nblocks={hp['nblocks']} exceeds d_in={d_in}")
        hp["block_size"] = None  # nblocks is the canonical form stored in plans
        return hp

    @classmethod
    def num_params(cls, d_in, d_out, nblocks, rank, **_):
        p, q = more_block_sizes(d_in, d_out, nblocks)
        return nblocks * rank * (p + q)

    def __init__(self, base: nn.Module, **hparams):
        super().__init__(base, **hparams)
        n, r = self.hparams["nblocks"], self.hparams["rank"]
        p, q = more_block_sizes(self.d_in, self.d_out, n)
        w = base.weight
        self.blkdiag1 = nn.Parameter(torch.empty(n, r, p, dtype=w.dtype, device=w.device))
        self.blkdiag2 = nn.Parameter(torch.zeros(n, q, r, dtype=w.dtype, device=w.device))
        kaiming_uniform_(self.blkdiag1, p)

    def delta(self, x):
        return monarch_apply(x, self.blkdiag1, self.blkdiag2, self.d_out)

    def forward(self, x):
        # MoRe has no scale (it is 1), so no multiply over the (tokens x d_out) update.
        y = self.base(x)
        if not self.enabled or self.merged:
            return y
        x = x.to(self.dtype)
        n, r = self.blkdiag1.shape[:2]
        if n * r > DENSE_MAX_RANK:
            return y + monarch_apply(x, self.blkdiag1, self.blkdiag2, self.d_out).to(y.dtype)
        # Same function as the block-wise path, as a rank-N·r product of two dense factors:
        # two GEMMs and no permuted copies of the (tokens x d) activations.
        m1, m2 = monarch_factors(self.blkdiag1, self.blkdiag2, self.d_in, self.d_out)
        return add_low_rank(y, F.linear(x, m1), m2)

    def delta_weight(self):
        return self.dense_by_probe()
