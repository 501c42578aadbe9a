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
from .registry import register


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

    def delta_weight(self):
        return self.dense_by_probe()
