"""grad-norm (HeteroLoRA): sum over the candidate's tensors of ||dL/dθ||_F at the scoring point."""
from __future__ import annotations

from .base import CandidateSignal, Proxy, register_proxy


@register_proxy
class GradNorm(Proxy):
    name = "grad-norm"
    description = "||dL/dA||_F + ||dL/dB||_F (every tensor of the adapter), scoring init"

    def score(self, sig: CandidateSignal) -> float:
        return float(sum(g.norm() for g in sig.grads))
