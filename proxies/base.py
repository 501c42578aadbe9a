"""The proxy interface and its registry (one small class per proxy, chosen by name).

A proxy turns one candidate's *signal* into a float (higher = more useful).  The signal is
computed once per candidate by ``proxies.signals`` from a handful of joint forward/backward
passes over the whole model (see that module), so a proxy only does arithmetic:

    @register_proxy
    class MyProxy(Proxy):
        name = "my-proxy"
        signal = "data"              # gradients of the task loss ("synflow": SynFlow's R)
        needs = {"param_grads"}      # what the signal must carry (see CandidateSignal)

        def score(self, sig):
            return float(sum(g.norm() for g in sig.grads))

``PROXIES`` maps names to classes; ``get_proxy(name)`` builds one or raises a ValueError
that lists the valid names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

PROXIES: dict[str, type["Proxy"]] = {}

# Set from benchmarks/results/proxy_quality.md: the proxy whose per-module scores rank the
# measured module importance best on average over MRPC and RTE (Spearman +0.42 on MRPC,
# +0.28 on RTE; mean +0.35 vs snip +0.25, grad-proj +0.17; see that file for the caveats).
DEFAULT_PROXY = "fisher"


@dataclass
class CandidateSignal:
    """Everything a proxy may read about one candidate, all at the *scoring point*.

    The scoring point is the base model (every candidate's contribution is zero in value),
    with the candidate's parameters ``theta`` at the scoring init: the adapter's own init
    for its non-zero factor and small seeded Kaiming-uniform values for the factor its init
    leaves at zero (so SNIP / SynFlow do not collapse to 0, as HeteroLoRA, arXiv 2406.14956, notes).

    theta  -- the candidate's parameter tensors at the scoring init (abs values for SynFlow)
    grads  -- dL/dtheta at the scoring point, same order (``param_grads``)
    G      -- dL/dW of the module's base weight, (d_out, d_in); for a shortcut the gradient
              of its d x d path at the addition site (always present)
    dw     -- the candidate's dense scaled ΔW at the scoring init (``param_grads``)
    channel_dots -- per batch, the vector over output channels o of sum_j G_b[o, j] ΔW[o, j],
              i.e. sum over tokens of (dL/dy_o) · (ΔW x)_o (``channel_dots``)
    build  -- returns a fresh scoring-init module for the candidate (adapter or shortcut)
    cache  -- a dict shared by all candidates of the same module (e.g. its singular values)
    """

    candidate: Any
    G: torch.Tensor
    theta: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    dw: torch.Tensor | None = None
    channel_dots: list[torch.Tensor] = field(default_factory=list)
    build: Callable[[], Any] | None = None
    cache: dict = field(default_factory=dict)


class Proxy:
    """Base class of every proxy; subclasses set ``name`` and implement ``score``."""

    name: ClassVar[str] = ""
    signal: ClassVar[str] = "data"  # "data": the task loss on real batches; "synflow"
    needs: ClassVar[frozenset[str]] = frozenset({"param_grads"})
    description: ClassVar[str] = ""

    def score(self, sig: CandidateSignal) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def register_proxy(cls: type[Proxy]) -> type[Proxy]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    PROXIES[cls.name] = cls
    return cls


def get_proxy(name: str | Proxy) -> Proxy:
    """A proxy instance by name (or the instance itself); ValueError lists valid names."""
    if isinstance(name, Proxy):
        return name
    try:
        return PROXIES[name]()
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown proxy {name!r}; valid proxies: {', '.join(sorted(PROXIES))}"
        ) from None
