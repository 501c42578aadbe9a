"""SNIP (HeteroLoRA): sum |θ ⊙ dL/dθ| over the candidate's tensors at the scoring point.

At the standard init (a zero factor) this is identically zero; the scoring init gives the zero
factor small seeded values, so it measures the first-order saliency of every weight.
"""
from __future__ import annotations

from .base import CandidateSignal, Proxy, register_proxy


@register_proxy
class Snip(Proxy):
    name = "snip"
    description = "sum |θ ⊙ dL/dθ| over the adapter's tensors, scoring init"

    def score(self, sig: CandidateSignal) -> float:
        return float(sum((t * g).abs().sum() for t, g in zip(sig.theta, sig.grads)))
