"""SynFlow (HeteroLoRA): data-free; every weight made positive, an all-ones input, R = sum of
the output logits, score = sum |θ ⊙ dR/dθ| over the candidate's (absolute) tensors."""
from __future__ import annotations

from .base import CandidateSignal, Proxy, register_proxy


@register_proxy
class SynFlow(Proxy):
    name = "synflow"
    signal = "synflow"
    description = "sum |θ ⊙ dR/dθ|, |weights|, all-ones input, R = sum(logits)"

    def score(self, sig: CandidateSignal) -> float:
        return float(sum((t * g).abs().sum() for t, g in zip(sig.theta, sig.grads)))
