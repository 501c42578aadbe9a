"""The search's cost in the user's unit: multiples of one full training run of the plan.

A full run is ``epochs`` passes over the task's training rows at the batch size:
F = ceil(epochs * ceil(n_train / batch_size)) optimizer steps.  Stages are sized in plan-step
equivalents before they run (the costs below), so the default settings plan for at most
``cost_budget`` * F; the report then states the measured multiple:
the stages' wall time over F times the plan's step time measured in the search (an estimate).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

# Costs in plan steps.  A super-network step: 1.47 on SST-2's 8,000 rows at 0.1% against the
# returned plan's full run (benchmarks/results/search_signal.md), 1.5 in
# benchmarks/results/supernet_overhead.md.  It cost 2.0-2.9 while its batches were random rows
# (padded to the longest of 16) and the plan's grouped by length.
# A proxy batch scores every candidate of the space at once: 11.6 plan steps in the demo search
# (MiniLM, 383 candidates, fisher).
SUPERNET_STEP_COST = 1.5
PROXY_BATCH_COST = 1.0  # the proxy's forward/backward on one batch
# Its joint signals for every candidate: 10.7 s for MiniLM's 383 candidates in the demo search on
# an idle machine, at 0.12 s per plan step.
PROXY_CANDIDATE_COST = 0.25
PROXY_SHARE = 0.1  # the zero-cost prior runs by default only when it costs at most this share
# Per finalist trial: the model copy, the plan's injection, the Trainer's set-up and tear-down.
# Measured in the search-vs-baselines CPU searches (2026-11-30): 1.5-2 s outside the trial's steps and its
# held-out batches, 10-13 steps of an SST-2 plan; 6 made the searches overrun 0.5x by ~15%.  It
# holds for any training-set size since the Trainer reads row lengths and labels as arrow columns
# (row by row it took 9 s more per trial on SST-2's 54k rows).
TRIAL_OVERHEAD = 12.0
FORWARD_COST = 0.5  # one inference batch: with a frozen base, backward costs about a forward
MIN_FINALIST_STEPS = 6  # a finalist's steps at the first rung: fewer tell nothing
# The lr stage: a range test of at most 100 steps (fastai and Lightning lr_find take 100 batches),
# then short trials from fresh init around its pick with what the finalists did not spend.
LR_STAGE_SHARE = 0.15  # of one full run, at most, and never the room of the first finalist
LR_RANGE_MAX_STEPS, LR_RANGE_MIN_STEPS = 100, 10
MIN_CONFIRM_STEPS = 8


def full_run_steps(n_train: int, batch_size: int, epochs: float) -> int:
    return max(1, math.ceil(epochs * math.ceil(n_train / batch_size)))


@dataclass
class StageSizes:
    """Every stage's size, fixed from the configuration and the data before anything runs."""

    full_run_steps: int
    supernet_steps: int
    scored_plans: int
    scoring_batches: int  # held-out forward batches per scored plan
    finalist_step_budget: int  # optimizer steps shared by all finalist trials, all rungs
    finalist_eval_batches: int  # held-out forward batches per finalist evaluation
    proxy_cost: float  # plan steps
    finalists: int  # finalist candidates (plan x learning rate) the budget affords
    rungs: int
    lr_range_steps: int = 0  # 0: no lr stage
    lr_confirm_units: float = 0.0  # plan steps for the confirmation trials, their set-up included
    spent_before_finalists: float | None = None  # measured (resize); None: the planned sizes stand

    def planned_by_stage(self) -> dict[str, float]:
        """Planned cost at most per stage, as a multiple of one full run (plan-step equivalents /
        F), counting every finalist evaluated at every rung."""
        lr = self.lr_range_steps + TRIAL_OVERHEAD + self.lr_confirm_units if self.lr_range_steps else 0.0
        units = {"proxy": self.proxy_cost, "supernet": self.supernet_steps * SUPERNET_STEP_COST,
                 "scoring": self.scored_plans * self.scoring_batches * FORWARD_COST,
                 "finalists": self.finalist_step_budget + self.finalists * self.rungs * (
                     self.finalist_eval_batches * FORWARD_COST + TRIAL_OVERHEAD), "lr": lr}
        return {k: v / self.full_run_steps for k, v in units.items()}

    def planned(self) -> float:
        return sum(self.planned_by_stage().values())

    def to_dict(self) -> dict:
        return asdict(self)


def proxy_cost(n_candidates: int, batches: int) -> float:
    return batches * PROXY_BATCH_COST + n_candidates * PROXY_CANDIDATE_COST if batches else 0.0


def proxy_affordable(n_candidates: int, batches: int, F: int) -> bool:
    return proxy_cost(n_candidates, batches) <= PROXY_SHARE * F


def size_stages(*, n_train: int, batch_size: int, epochs: float, cost_budget: float,
                supernet_share: float, scoring_share: float, eval_rows: int, n_finalists: int,
                rungs: int, eta: int, proxy_batches: int, n_candidates: int = 0,
                min_scored: int = 1, lr_stage: bool = False) -> StageSizes:
    """Stage sizes within ``cost_budget`` full runs: the super-network gets ``supernet_share``
    of a full run's cost, cheap scoring ``scoring_share``, the finalists and the lr stage what is
    left (split_rest).  ``proxy_batches`` 0: no proxy stage."""
    F = full_run_steps(n_train, batch_size, epochs)
    eval_batches = max(1, math.ceil(eval_rows / batch_size))
    supernet = max(1, int(supernet_share * F / SUPERNET_STEP_COST))
    scored = max(min_scored, int(scoring_share * F / (eval_batches * FORWARD_COST)))
    proxy = proxy_cost(n_candidates, proxy_batches)
    left = cost_budget * F - proxy - supernet * SUPERNET_STEP_COST - scored * eval_batches * FORWARD_COST
    sizes = StageSizes(full_run_steps=F, supernet_steps=supernet, scored_plans=scored,
                       scoring_batches=eval_batches, finalist_step_budget=0, finalist_eval_batches=eval_batches,
                       proxy_cost=proxy, finalists=0, rungs=rungs)
    return split_rest(sizes, left, n_finalists, eta, lr_stage)


def split_rest(sizes: StageSizes, left: float, n_finalists: int, eta: int, lr_stage: bool) -> StageSizes:
    """``left`` plan steps split between the finalists and the lr stage.  As many of the
    ``n_finalists`` candidates (in their priority order) take part as can each train
    MIN_FINALIST_STEPS steps at the first rung, ``eta`` times more at each later one, and be
    evaluated at every rung, even if none is ever cut.  ``lr_stage``: the lr stage first takes up
    to LR_STAGE_SHARE of a full run, but not the room of one finalist (all that is left when not
    even one fits), or nothing when its range test would be under LR_RANGE_MIN_STEPS; what its
    range test does not use plans its confirmation trials."""
    F, rungs = sizes.full_run_steps, sizes.rungs
    per_rung = sizes.finalist_eval_batches * FORWARD_COST + TRIAL_OVERHEAD  # each finalist's evaluation and setup
    per_candidate = MIN_FINALIST_STEPS * sum(eta ** k for k in range(rungs)) + rungs * per_rung
    lr_units, lr_steps = 0.0, 0
    if lr_stage:
        lr_units = max(0.0, min(LR_STAGE_SHARE * F, left - per_candidate if left >= per_candidate else left))
        lr_steps = min(LR_RANGE_MAX_STEPS, int(lr_units - TRIAL_OVERHEAD))
        if lr_steps < LR_RANGE_MIN_STEPS:
            lr_units, lr_steps = 0.0, 0
        left -= lr_units
    n_fit = max(0, min(n_finalists, int(left // per_candidate)))
    steps = int(left - n_fit * rungs * per_rung) if n_fit else 0
    return replace(sizes, finalist_step_budget=max(0, steps), finalists=n_fit, lr_range_steps=lr_steps,
                   lr_confirm_units=max(0.0, lr_units - lr_steps - TRIAL_OVERHEAD) if lr_steps else 0.0)


def resize(sizes: StageSizes, spent: float, cost_budget: float, n_finalists: int, eta: int,
           lr_stage: bool) -> StageSizes:
    """The finalists' and the lr stage's sizes again, from what the stages before them measurably
    cost (``spent`` plan steps: their wall time over the plan's step time) instead of what they
    were priced at, so that a stage priced too high (the proxy: 106 plan steps priced, about 20
    spent on a regression task) leaves its steps to the stages that compare real training."""
    return replace(split_rest(sizes, cost_budget * sizes.full_run_steps - spent, n_finalists, eta, lr_stage),
                   spent_before_finalists=round(spent, 2))


def measured_multiple(stage_seconds: dict[str, float], step_time_s: float, F: int,
                      stages=("proxy", "supernet", "scoring", "finalists", "lr", "trials")) -> float:
    """Search wall time of the named stages over the estimated time of one full run."""
    if not step_time_s or not math.isfinite(step_time_s):
        return float("nan")
    return sum(stage_seconds.get(s, 0.0) for s in stages) / (F * step_time_s)


def search_cost(search, best, sizes=None) -> dict[str, Any]:
    """The search's cost as a multiple of one full training run of the plan: the stages' time
    over the full run's steps times the plan's step time measured in its short trial, in
    CPU time (robust to a shared machine) and in wall time; and the planned multiple."""
    cfg = search.cfg
    F = full_run_steps(len(search._data.train), cfg.batch_size, cfg.epochs)
    attrs = best.user_attrs if best is not None else {}
    step, cpu = attrs.get("step_time_s") or float("nan"), attrs.get("step_cpu_s") or float("nan")
    if not np.isfinite(step) and sizes is not None:  # not a finalist: from the super-network
        step = sizes["supernet_step_time_s"] / SUPERNET_STEP_COST
    if not np.isfinite(cpu) and sizes is not None and search.stage_cpu.get("supernet"):
        cpu = search.stage_cpu["supernet"] / max(sizes["supernet_steps"], 1) / SUPERNET_STEP_COST
    out = {"full_run_steps": F, "plan_step_time_s": step, "plan_step_cpu_s": cpu,
           "full_run_estimate_s": F * step,
           "search_seconds": sum(v for k, v in search.stage_seconds.items() if k != "setup"),
           "search_cpu_seconds": sum(search.stage_cpu.values()),
           "stage_cpu_seconds": dict(search.stage_cpu),
           "multiple": measured_multiple(search.stage_seconds, step, F),
           "multiple_cpu": measured_multiple(search.stage_cpu, cpu, F),
           "note": "estimates: the stages' time (setup excluded) over (full-run steps x the "
                   "plan's step time measured in its short trial, first step excluded), in CPU and in wall time"}
    planned = (sizes or {}).get("planned_by_stage", {})
    out["stages"] = {k: {"planned": planned.get(k), "spent": measured_multiple(search.stage_seconds, step, F, (k,)),
                         "spent_cpu": measured_multiple(search.stage_cpu, cpu, F, (k,))}
                     for k in search.stage_seconds if k != "setup"}
    if sizes is not None:
        out["planned_multiple"] = sizes["planned_multiple"]
        out["stage_sizes"] = sizes
    return out
