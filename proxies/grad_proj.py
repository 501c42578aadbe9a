"""grad-proj: the first-order loss decrease a candidate's structure can reach, per unit ΔW.

With ``G = dL/dW`` the gradient of the module's base weight (mean over the scoring batches),
a step ΔW changes the loss by ``<G, ΔW>`` to first order.  The candidate's family of updates
``S = {ΔW(θ)}`` limits which directions it can take, so its potential is

    grad-proj = sup_{ΔW in S, ||ΔW||_F = 1} <G, ΔW>   (= ||P_S G|| for a subspace / cone)

in the same units (loss per unit Frobenius norm of ΔW) for every kind and size, which is what
lets a LoRA rank, a MoRe shape and a SURM type on the same module be compared fairly, and it
grows with capacity (rank 8 >= rank 4 on the same module).  It needs no scoring init, no
random draw and no parameter gradient: only G, which the joint pass gives for every module.

Closed forms (exact, see tests):
  lora / shortcut (rank r): sqrt(sum_{i<=r} s_i(G)^2)  (Eckart-Young; shortcut G is the
      gradient of its d x d path at the addition site);
  more (N blocks, rank r): ΔW is, after the Monarch permutations, an N x N grid of q x p
      blocks, block (l, k) an independent product of rank m_lk = #{a < r: (aN + l) // r == k}
      (each row of blkdiag1 and column of blkdiag2 feeds exactly one block), so the value is
      sqrt(sum_blocks sum_{i<=m_lk} s_i(G_lk)^2);
  kronecker (rank r): kron(B, A) is a rank-1 matrix after the Van Loan-Pitsianis
      rearrangement, so the value is s_1(R(G)) (exact when r divides d_in and d_out);
  circulant: the wrapped diagonals are an orthogonal basis: sqrt(sum_t S_t^2 / n_t), S_t
      the sum of G over diagonal t and n_t its length.
Other kinds: toeplitz and ldr get the exact value on a subspace they contain (symmetric
Toeplitz T(b) = T(b) T(e0); circulant circ(c) = circ(c) skewcirc(e0)), a lower bound.  On
MiniLM gradients, 30 steps of gradient ascent on <G, ΔW(θ)>/||ΔW(θ)|| through the adapter's
own ``delta_weight`` raise it by ~1.5x (still >10x below LoRA r2 on the same module, whose
G is nearly low-rank) but cost seconds per 1536-wide module, so it is off by default:
``GradProj(ascent_steps=k)`` turns it on, and it is also the generic path for any new
adapter type (k=0 there gives 0: no known subspace).
"""
from __future__ import annotations

import math

import torch

from search_spaces.more import more_block_sizes
from search_spaces.space import kind_of

from .base import CandidateSignal, Proxy, register_proxy

ASCENT_STEPS = 0  # default; new kinds without a closed form use GENERIC_STEPS
GENERIC_STEPS = 8


def _svdvals(cache: dict, key, M: torch.Tensor) -> torch.Tensor:
    if key not in cache:
        cache[key] = torch.linalg.svdvals(M)
    return cache[key]


def lowrank_energy(G: torch.Tensor, r: int, cache: dict) -> float:
    s = _svdvals(cache, "svd", G)
    return float((s[:r] ** 2).sum())


def more_rank_pattern(nblocks: int, rank: int) -> torch.Tensor:
    """m[l, k]: rank of Monarch block (output block l, input block k)."""
    m = torch.zeros(nblocks, nblocks, dtype=torch.long)
    for l in range(nblocks):
        for a in range(rank):
            m[l, (a * nblocks + l) // rank] += 1
    return m


def more_blocks(G: torch.Tensor, nblocks: int) -> torch.Tensor:
    """(N, N, q, p): block (l, k) holds G[s*N + l, k*p + j] (zero where padded/truncated)."""
    d_out, d_in = G.shape
    p, q = more_block_sizes(d_in, d_out, nblocks)
    Gp = G.new_zeros(nblocks * q, nblocks * p)
    Gp[:d_out, :d_in] = G
    return Gp.view(q, nblocks, nblocks, p).permute(1, 2, 0, 3)


def more_energy(G: torch.Tensor, nblocks: int, rank: int, cache: dict) -> float:
    s = _svdvals(cache, ("more", nblocks), more_blocks(G, nblocks))  # (N, N, min(q, p))
    m = more_rank_pattern(nblocks, rank).to(s.device)
    keep = torch.arange(s.shape[-1], device=s.device) < m[..., None]
    return float((s ** 2 * keep).sum())


def kron_rearrange(G: torch.Tensor, rank: int) -> torch.Tensor:
    """R with R[i1*r + j1, i2*p + j2] = G_pad[i1*r + i2, j1*p + j2], so <G, kron(B,A)> = vec(B)^T R vec(A)."""
    d_out, d_in = G.shape
    p, q = math.ceil(d_in / rank), math.ceil(d_out / rank)
    Gp = G.new_zeros(q * rank, rank * p)
    Gp[:d_out, :d_in] = G
    return Gp.view(q, rank, rank, p).permute(0, 2, 1, 3).reshape(q * rank, rank * p)


def kron_energy(G: torch.Tensor, rank: int, cache: dict) -> float:
    s = _svdvals(cache, ("kron", rank), kron_rearrange(G, rank))
    return float(s[0] ** 2)


def diagonal_projection(G: torch.Tensor, index: torch.Tensor, n: int) -> tuple[float, torch.Tensor]:
    """Projection of G onto the span of disjoint 0/1 patterns ``index == t``: (energy, coeffs)."""
    S = torch.zeros(n, dtype=G.dtype, device=G.device).index_add_(0, index.flatten(), G.flatten())
    cnt = torch.bincount(index.flatten(), minlength=n).to(G.dtype)
    coef = torch.where(cnt > 0, S / cnt.clamp_min(1), torch.zeros_like(S))
    return float((S * coef).sum()), coef


def _grid(G: torch.Tensor):
    d_out, d_in = G.shape
    i = torch.arange(d_out, device=G.device)[:, None]
    j = torch.arange(d_in, device=G.device)[None, :]
    return i, j, max(d_in, d_out)


def circulant_energy(G: torch.Tensor, cache: dict) -> tuple[float, torch.Tensor]:
    if "circ" not in cache:
        i, j, n = _grid(G)
        cache["circ"] = diagonal_projection(G, (i - j) % n, n)
    return cache["circ"]


def sym_toeplitz_energy(G: torch.Tensor, cache: dict) -> tuple[float, torch.Tensor]:
    if "symtoep" not in cache:
        i, j, n = _grid(G)
        cache["symtoep"] = diagonal_projection(G, (i - j).abs(), n)
    return cache["symtoep"]


def alignment(G: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
    return (G * dw).sum() / dw.norm().clamp_min(1e-30)


def ascent(G: torch.Tensor, module, steps: int = ASCENT_STEPS, lr: float = 0.05) -> float:
    """max over a few Adam steps of <G, ΔW(θ)>/||ΔW(θ)||, from the module's current θ."""
    params = [p for p in module.parameters(recurse=False)]
    scales = [float(p.detach().pow(2).mean().sqrt().clamp_min(1e-8)) for p in params]
    opt = torch.optim.Adam([{"params": [p], "lr": lr * s} for p, s in zip(params, scales)])
    best = -math.inf
    for _ in range(steps + 1):
        with torch.enable_grad():
            val = alignment(G, module.delta_weight())
            best = max(best, float(val.detach()))
            opt.zero_grad()
            (-val).backward()
        opt.step()
    return best


def _warm_start(kind: str, module, coef: torch.Tensor) -> None:
    """Put the module at a point that realises the subspace lower bound (where we know one)."""
    with torch.no_grad():
        if kind == "toeplitz":  # T(b) T(e0) = T(b): the symmetric-Toeplitz projection
            module.toep_a.mul_(1e-2)
            module.toep_a[0] += 1.0
            module.toep_b.copy_(coef)
        elif kind == "ldr":  # circ(c0) skewcirc(e0) = circ(c0): the circulant projection
            module.ldr_s.mul_(1e-2)
            module.ldr_s[0, 0] += 1.0
            module.ldr_c.mul_(1e-2)
            module.ldr_c[0].copy_(coef)


def potential(sig: CandidateSignal, ascent_steps: int = ASCENT_STEPS) -> float:
    """sup <G, ΔW>/||ΔW|| over the candidate's family (exact or a tight lower bound)."""
    c, G, cache = sig.candidate, sig.G, sig.cache
    hp = c.choice_dict
    kind = kind_of(c)
    if kind in ("lora", "shortcut"):
        return math.sqrt(lowrank_energy(G, hp.get("rank", 8), cache))
    if kind == "more":
        return math.sqrt(more_energy(G, hp.get("nblocks", 4), hp.get("rank", 4), cache))
    if kind == "kronecker":
        return math.sqrt(kron_energy(G, hp.get("rank", 8), cache))
    if kind == "circulant":
        return math.sqrt(circulant_energy(G, cache)[0])
    lower, coef = 0.0, None
    if kind == "toeplitz":
        lower, coef = sym_toeplitz_energy(G, cache)
    elif kind == "ldr":
        lower, coef = circulant_energy(G, cache)
    else:
        ascent_steps = max(ascent_steps, GENERIC_STEPS)  # no closed form, no known subspace
    lower = math.sqrt(max(lower, 0.0))
    if sig.build is None or ascent_steps <= 0:
        return lower
    module = sig.build()
    if coef is not None:
        _warm_start(kind, module, coef)
    return max(lower, ascent(G, module, ascent_steps))


@register_proxy
class GradProj(Proxy):
    name = "grad-proj"
    needs = frozenset()
    description = ("sup over the candidate's ΔW family of <G, ΔW>/||ΔW||_F, G = dL/dW "
                   "(LoRA: top-r singular values of G)")

    def __init__(self, ascent_steps: int = ASCENT_STEPS):
        self.ascent_steps = ascent_steps

    def score(self, sig: CandidateSignal) -> float:
        return potential(sig, self.ascent_steps)
