"""Fisher (zero-cost NAS, Turner et al. / Abdelfattah et al.), per adapter output channel.

The candidate's output ``z = ΔW x`` is treated as the activation: per batch b and output
channel o, ``F_b,o = ½ (Σ_tokens z_o · dL/dy_o)²``; the score is the mean over batches of
``Σ_o F_b,o``.  ``Σ_tokens z_o dL/dy_o = Σ_j G_b[o, j] ΔW[o, j]``, so it comes from the
per-batch G's of the joint pass (and equals the channel-wise Fisher of a gate on the adapter).
"""
from __future__ import annotations

from .base import CandidateSignal, Proxy, register_proxy


@register_proxy
class Fisher(Proxy):
    name = "fisher"
    needs = frozenset({"param_grads", "channel_dots"})
    description = "mean over batches of ½ Σ_o (Σ_t z_o dL/dy_o)², z = adapter output at scoring init"

    def score(self, sig: CandidateSignal) -> float:
        if not sig.channel_dots:
            return 0.0
        return float(sum(0.5 * (d ** 2).sum() for d in sig.channel_dots) / len(sig.channel_dots))
