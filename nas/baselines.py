"""Uniform LoRA at a given size: the simple baselines a searched plan must beat, on query,value,
on the widest placement that fits the size (every linear layer where rank 1 fits, else every
attention projection, else query,value, else value) and on the MLP (its up, gate and down
projections: moving uniform LoRA there from query,value at the same size gained 1.6 points in
PEFT's method comparison).  Where not even rank 1 fits on every layer, rank 1 on as many of the
top layers as fit (the layers nearest the task head).  Used by the search (as finalists) and by
benchmarks."""
from __future__ import annotations

from dataclasses import dataclass

from search_spaces import count_params
from search_spaces.anatomy import ModelLayout
from search_spaces.space import Candidate, freeze_choice

from .plan import Plan

PLACEMENTS = ("qv", "widest", "mlp")
ATTENTION_ROLES = frozenset({"q", "k", "v", "qkv", "o"})
MLP_ROLES = frozenset({"gate", "ffn_up", "ffn_down"})


@dataclass(frozen=True)
class UniformLoRA:
    placement: str  # "query,value", "all linear", "attention", "MLP", ... (", top K layers")
    modules: tuple[str, ...]
    rank: int
    params: int

    @property
    def label(self) -> str:
        return f"uniform LoRA r{self.rank} on {self.placement} ({len(self.modules)} modules)"

    def candidates(self, layout: ModelLayout) -> list[Candidate]:
        choice = freeze_choice({"type": "lora", "rank": self.rank})
        out = []
        for name in self.modules:
            m = layout.module(name)
            out.append(Candidate(name, m.layer, m.role, choice,
                                 count_params("lora", m.d_in, m.d_out, rank=self.rank)))
        return out

    def plan(self, layout: ModelLayout, **fields) -> Plan:
        plan = Plan.from_candidates(self.candidates(layout), layout, **fields)
        plan.provenance = {"baseline": self.label}
        return plan


def placement_modules(layout: ModelLayout, placement: str, size: int) -> tuple[str, list]:
    """(placement label, modules) of ``placement`` for a plan of ``size`` parameters.  "widest":
    the first of all linear layers, attention, query,value, value where rank 1 fits, else the
    last of them (value alone ranks next to query,value at equal size in LoRA's Table 5 (Hu et
    al., 2021), and spreading rank 1 wider beat deeper ranks here: placement_ceiling.md)."""
    qv = [m for m in layout.modules if m.role in ("q", "v")] or [m for m in layout.modules if m.role == "qkv"]
    if placement == "qv":
        return "query,value", qv
    if placement == "mlp":
        return "MLP", [m for m in layout.modules if m.role in MLP_ROLES]
    if placement == "widest":
        chain = [(label, mods) for label, mods in (
            ("all linear", list(layout.modules)),
            ("attention", [m for m in layout.modules if m.role in ATTENTION_ROLES]),
            ("query,value", qv), ("value", [m for m in layout.modules if m.role == "v"])) if mods]
        return next(((label, mods) for label, mods in chain if _cost(mods) <= size), chain[-1])
    raise ValueError(f"unknown placement {placement!r}; valid: {list(PLACEMENTS)}")


def _cost(mods) -> int:
    return sum(count_params("lora", m.d_in, m.d_out, rank=1) for m in mods)


def uniform_lora(layout: ModelLayout, size: int, placement: str = "qv") -> UniformLoRA | None:
    """The largest uniform LoRA rank on ``placement`` whose parameters stay <= ``size``.  Where
    not even rank 1 fits, rank 1 on the top layers that fit (placement "<label>, top K layers":
    query,value for "qv", value for "widest", MLP for "mlp"); where not one layer fits, or the
    model has no such modules, None."""
    label, mods = placement_modules(layout, placement, size)
    per_rank = _cost(mods)
    if mods and per_rank <= size:
        rank = size // per_rank
        return UniformLoRA(label, tuple(m.name for m in mods), rank, rank * per_rank)
    if not mods:
        return None
    top, used, n_layers = [], 0, 0
    for layer in sorted({m.layer for m in mods}, reverse=True):
        here = [m for m in mods if m.layer == layer]
        cost = _cost(here)
        if used + cost > size:
            break
        top, used, n_layers = top + here, used + cost, n_layers + 1
    label = f"{label}, top {n_layers} layer{'s' if n_layers > 1 else ''}"
    return UniformLoRA(label, tuple(m.name for m in top), 1, used) if top else None


def baselines_at(layout: ModelLayout, size: int) -> dict[str, UniformLoRA]:
    """Every placement's uniform LoRA of at most ``size`` parameters, where one fits."""
    return {p: b for p in PLACEMENTS if (b := uniform_lora(layout, size, p)) is not None}


def preferred(baselines: dict[str, UniformLoRA], layout: ModelLayout) -> tuple[str, ...]:
    """The placements of ``baselines`` in the order a search prefers them without evidence
    either way: the MLP first where rank 1 fits on the MLP of at least half the layers, else
    the widest first; query,value last.  The MLP: moving uniform LoRA there from query,value at
    the same size gained 1.6 points in PEFT's method comparison, and at 0.1% of MiniLM (MLP r=1
    on 5 of 6 layers) it beat attention r=1 on MRPC by 3.0 points over 10 seeds, paired (8 of
    10), and tied it on SST-2; on 2 of 6 layers it trailed q,v r=1 by 4 points on MRPC, and on
    one by 10 points behind value r=1 on SST-2 (benchmarks/results/placement_ceiling_mrpc.md,
    and the comparison of the search against uniform-LoRA baselines, search_vs_baselines.md)."""
    mlp = baselines.get("mlp")
    spread = mlp is not None and 2 * len({layout.module(n).layer for n in mlp.modules}) >= layout.num_layers
    order = ("mlp", "widest", "qv") if spread else ("widest", "mlp", "qv")
    return tuple(p for p in order if p in baselines)
