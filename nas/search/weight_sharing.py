"""The weight-sharing search (strategy "supernet", the default), followed from one place.  Every
stage is sized from ``cfg.cost_budget`` full runs of the plan (cost.size_stages); check_config
first rejects a config the stages cannot use.  weight_sharing_search runs, in order:

  1. super-network: the whole space trained as one network, importance measured on its trained
     weights (supernet.SharedWeights.train_or_load);
  2. cheap scoring: many plans and the uniform-LoRA baselines scored on the shared weights by
     held-out loss (supernet.score_plans);
  3. finalists: sized again from what stages 1-2 measurably cost (measured_sizes); the best few
     and the baselines trained at a small lr grid, warm-started, cut by successive halving
     (finalists.pick_finalists, finalists.run_finalists), stopped early when the lr stage can use
     their steps better (no take-off); the last rung's leader, unless a baseline is within noise
     of it (proven_best, best_baseline);
  4. signal check: whether the finalists' training took off at all, else the preferred baseline
     (without_signal, progress);
  5. the returned plan: that fallback, else the leader, else (no finalist trained) the best plan
     on the shared weights, with its report lines (summary.report_lines);
  6. lr stage: its learning rate, from a range test on it and short trials around the pick
     (lr_stage.run_lr_stage), with what the finalists did not spend.

Workers: the same command started N times with the same --storage and the same -o splits the
search.  Each stage is a round of jobs in the shared Optuna study (workers.run_round), each done
once: the super-network (one worker trains it into -o, the others wait and load it), the scoring
rounds, every finalist at every rung, then the lr stage with plan.json and the report (write_once).
What steers a round (its plans, the cuts, the finalists' sizes and the start: agreed_sizes) comes
from the study alone, so every worker runs the same plan of work and they return the plan one
worker finds.  A worker killed mid-job has its job retried by another; --resume after all died
loses no finished job and loads the super-network.  The weights are files in -o: workers share one
machine or a shared file system (a worker whose -o lacks them trains the same network itself).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time

import optuna
from optuna.trial import TrialState

from ..baselines import baselines_at
from ..errors import UserError
from ..io import atomic_write_text
from ..train.precision import resolve_device
from ..train.stall import constant_loss
from .config import PLAN_ATTR
from .cost import SUPERNET_STEP_COST, StageSizes, resize, size_stages
from .study import check_study_settings, study_settings
from .workers import decide_once, lock_name, write_once
from .finalists import is_baseline, n_finalist_candidates, pick_finalists, preference, run_finalists
from .lr_stage import run_lr_stage, skipped
from .ranking import heldout, progress, worse_beyond_noise
from .summary import report_lines
from .supernet import SharedWeights, score_plans


SIZES_FILE = "stage_sizes.json"


def check_config(cfg) -> None:
    """Raise a UserError naming the field and the fix for a value the stages cannot use."""
    problems = []
    if not cfg.cost_budget > 0:
        problems.append(f"--cost-budget {cfg.cost_budget} must be above 0, e.g. 0.5")
    for name in ("supernet_share", "scoring_share"):
        if not 0 < getattr(cfg, name) < cfg.cost_budget:
            problems.append(f"--{name.replace('_', '-')} {getattr(cfg, name)} must be above 0 and "
                            f"below --cost-budget {cfg.cost_budget}")
    if not cfg.lr_grid or any(not lr > 0 for lr in cfg.lr_grid):
        problems.append(f"--lr-grid {cfg.lr_grid} needs one or more learning rates above 0, e.g. 1e-3,5e-4")
    lo_hi = tuple(cfg.lr_test_range)
    if len(lo_hi) != 2 or not 0 < lo_hi[0] < lo_hi[1]:
        problems.append(f"--lr-test-range {cfg.lr_test_range} needs two rates, the lower first, e.g. 1e-5,1e-1")
    if cfg.rungs < 1 or cfg.eta < 2 or cfg.n_finalists < 1 or cfg.scoring_rows < 2:
        problems.append("--rungs and --n-finalists must be at least 1, --eta at least 2, "
                        "--scoring-rows at least 2")
    if problems:
        raise UserError("; ".join(problems))


def weight_sharing_search(search):
    """The stages in the module docstring's order, on every worker of the study.  Returns the
    SearchResult, whose plan and report one worker wrote (write_once)."""
    cfg = search.cfg
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, name = search.open_storage(), cfg.study or "more-search"
    # The finalists' study first: a worker with other settings is refused before it trains; the
    # scoring study too: a resume on a shared storage looks for it (study.open_checked_storage).
    check_study_settings(optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                             load_if_exists=True), study_settings(cfg), cfg.resume)
    optuna.create_study(study_name=f"{name}.scoring", storage=storage, direction="minimize", load_if_exists=True)
    stages = optuna.create_study(study_name=f"{name}.stages", storage=storage, direction="minimize",
                                 load_if_exists=True)
    n_base = len(baselines_at(search.layout, search.budget))
    ev = search.trial_data.eval
    rows = ev.select(range(min(cfg.scoring_rows, len(ev))))
    search.n_score_rows = len(rows)
    sizes = search.sizes = size_stages(
        n_train=len(search._data.train), batch_size=cfg.batch_size, epochs=cfg.epochs,
        cost_budget=cfg.cost_budget, supernet_share=cfg.supernet_share, scoring_share=cfg.scoring_share,
        eval_rows=len(rows), n_finalists=n_finalist_candidates(cfg.n_finalists, n_base, len(cfg.lr_grid)),
        rungs=cfg.rungs, eta=cfg.eta, proxy_batches=search.n_proxy_batches if search.proxy_plan is not None else 0,
        n_candidates=len(search.candidates), min_scored=2 + n_base + (search.proxy_plan is not None),
        lr_stage=cfg.lr_test == "range")

    def mark(name, t0, c0):
        search.stage_seconds[name] = time.perf_counter() - t0
        search.stage_cpu[name] = time.process_time() - c0

    # 1. super-network
    t0, c0 = time.perf_counter(), time.process_time()
    shared = SharedWeights(search)
    meta = shared.train_or_load(stages, name)
    mark("supernet", t0, c0)
    if cfg.progress:
        print(f"super-network: {meta['steps']} steps{' (reused)' if meta.get('reused') else ''}; "
              f"scoring {sizes.scored_plans} plans, then {sizes.finalists} finalists")
    # 2. cheap scoring
    t0, c0 = time.perf_counter(), time.process_time()
    scoring = score_plans(search, shared, sizes, storage, name, rows)
    mark("scoring", t0, c0)
    # 3. finalists, sized again from what the stages before them cost
    sizes, start = agreed_sizes(search, stages, scoring, sizes, meta, n_base, rows)
    search.sizes = sizes
    t0, c0 = time.perf_counter(), time.process_time()
    lr_tested = sizes.lr_range_steps > 0
    finalists = pick_finalists(scoring, cfg.n_finalists, cfg.lr_grid, sizes.finalists, shared.preferred)
    # With an lr stage to hand them to, no more rungs once the leader has not left the start: a
    # longer rung of the same finalists decides nothing the lr stage could not use better.
    stop_above = start * (1 - cfg.min_progress) if lr_tested and start is not None else None
    study, ranked, unspent = run_finalists(search, shared, finalists, storage, name, rows,
                                           sizes.finalist_step_budget, stop_above)
    best = proven_best(ranked, cfg.noise_z, shared.preferred) if ranked else None
    mark("finalists", t0, c0)
    # 4. signal check, 5. the returned plan
    fallback, signal = without_signal(search, study, scoring, best, rows, shared.preferred,
                                      lr_tested=lr_tested, start=start)
    if fallback is not None:
        best = fallback
    signal = stopped_early(search.finalists_stopped, unspent, lr_tested) + signal
    if len(finalists) == 1 and finalists[0].origin.startswith("baseline"):
        signal = [f"- the budget affords one finalist: the preferred uniform LoRA ({finalists[0].origin}), since a "
                  f"searched plan must beat one to be returned; a larger `--cost-budget` lets the search compare"] + signal
    if best is None:  # no finalist trained (budget too small): the best plan on shared weights
        study, best = scoring, scoring.best_trial
        signal = [f"- the budget affords no finalist: the plan is the best on the shared weights, never trained on its "
                  f"own, at the finalists' first rate ({cfg.lr_grid[0]:g}), untested; a larger `--cost-budget` trains "
                  "finalists"] + signal
    lines = report_lines(search, meta, scoring, study, best, signal)

    def finish():
        # 6. lr stage: the confirmations get their share and whatever the finalists did not spend
        chosen, begin = best, start
        if sizes.lr_range_steps:
            t0, c0 = time.perf_counter(), time.process_time()
            begin = begin if begin is not None else start_loss(search, rows)
            chosen, lr_lines = run_lr_stage(search, chosen, rows, begin, sizes.lr_confirm_units + unspent)
            mark("lr", t0, c0)
        else:
            lr_lines = skipped(cfg)
        plan_sizes = {**sizes.to_dict(), "planned_multiple": round(sizes.planned(), 4),
                      "planned_by_stage": {k: round(v, 4) for k, v in sizes.planned_by_stage().items()},
                      "supernet_step_time_s": meta["step_time_s"]}
        return search.result(study, chosen, plan_sizes, lines + lr_lines)

    return write_once(search, stages, name, finish)


def stopped_early(stopped: tuple[int, str] | None, unspent: int, lr_tested: bool) -> list[str]:
    """The report's line on finalists that stopped before their last rung: why, and where their
    steps went (the default spends most of --cost-budget unless it says why not)."""
    if not stopped or not unspent:
        return []
    rung, why = stopped
    return [f"- the finalists stopped after rung {rung}: {why}; their other {unspent} steps "
            + ("went to the lr stage" if lr_tested else "were not spent (`--lr-test range` would spend them "
               "testing the plan's learning rate)")]


def agreed_sizes(search, stages, scoring, sizes: StageSizes, meta: dict, n_base: int, rows):
    """(the finalists' sizes, the start loss or None), decided once for all the workers of the
    study (workers.decide_once), since both steer the rungs' cuts.  Measured as the compute the
    stages before took: the super-network's training and the scoring trials' own times, which
    several workers shared (one worker's wall time over them would under-count it).  The study
    keeps them, so a resumed search (its earlier stages reloaded in seconds) trains its finalists
    for the same steps and reuses every finished trial; SIZES_FILE shows them in the output."""
    cfg = search.cfg
    planned = [sizes.to_dict(), meta.get("fingerprint")]
    key = "sizes " + hashlib.sha1(json.dumps(planned, sort_keys=True).encode()).hexdigest()[:12]

    def decide():
        own = search.stage_seconds
        scored = sum((t.datetime_complete - t.datetime_start).total_seconds()
                     for t in scoring.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if t.datetime_start and t.datetime_complete)
        seconds = {**own, "supernet": max(own.get("supernet", 0.0), meta["seconds"]),
                   "scoring": max(own.get("scoring", 0.0), scored)}
        return {"sizes": measured_sizes(search, sizes, meta, n_base, seconds).to_dict(),
                "start": start_loss(search, rows) if cfg.min_progress > 0 else None}

    got = decide_once(stages, key, decide, lock_name(cfg.study or "more-search"))
    agreed = StageSizes(**got["sizes"])
    atomic_write_text(search.out / SIZES_FILE, json.dumps({"key": planned, "sizes": agreed.to_dict()}, indent=1))
    return agreed, got["start"]


def measured_sizes(search, sizes: StageSizes, meta: dict, n_base: int, seconds: dict) -> StageSizes:
    """The finalists' and the lr stage's sizes from what the stages before them cost (cost.resize;
    ``seconds``: each stage's time), counted at most as priced: an overrun is reported, not taken
    from the stages that compare real training."""
    cfg = search.cfg
    plan_step_s = meta["step_time_s"] / SUPERNET_STEP_COST
    before = ("proxy", "supernet", "scoring")
    priced = sum(v for k, v in sizes.planned_by_stage().items() if k in before) * sizes.full_run_steps
    spent = sum(seconds.get(k, 0.0) for k in before) / plan_step_s
    return resize(sizes, min(spent, priced), cfg.cost_budget,
                  n_finalist_candidates(cfg.n_finalists, n_base, len(cfg.lr_grid)), cfg.eta, cfg.lr_test == "range")


def best_baseline(ranked: list, z: float, order: tuple[str, ...]):
    """The preferred baseline of the rung, unless another beats it beyond noise."""
    bases = [t for t in ranked if is_baseline(t)]
    if not bases:
        return None
    pref = min(bases, key=preference(order))  # stable: the lowest loss of the most preferred placement
    return bases[0] if worse_beyond_noise(pref.user_attrs["rows"], bases[0].user_attrs["rows"], z) else pref


def proven_best(ranked: list, z: float, order: tuple[str, ...]):
    """The leader of a rung (trials by held-out loss, best first), unless it is a searched plan
    that is not better than the best uniform-LoRA baseline of the rung beyond noise: then that
    baseline.  The burden of proof is on the searched plan, since without the search a user
    would train uniform LoRA; short trials favour plans with adapters next to the head (their
    loss falls first), and such a lead within noise did not hold over a full run."""
    lead, base = ranked[0], best_baseline(ranked, z, order)
    if base is None or (not is_baseline(lead) and worse_beyond_noise(
            base.user_attrs["rows"], lead.user_attrs["rows"], z)):
        return lead
    return base


def start_loss(search, rows) -> float:
    """The lower of the untrained model's held-out loss on ``rows`` and the labels' prior's."""
    untrained = copy.deepcopy(search.base).to(resolve_device(search.cfg.device))
    start = heldout(untrained, search.trial_data, rows, batch_size=search.cfg.batch_size).loss
    del untrained
    prior = constant_loss(search.trial_data, rows)
    return start if prior is None else min(start, prior)


def without_signal(search, study, scoring, best, rows, order: tuple[str, ...], lr_tested: bool = False,
                   start: float | None = None):
    """(fallback trial or None, report lines).  The start is the lower of the untrained model's
    held-out loss and the labels' prior (learning the class frequencies is no signal); when the
    finalists' best baseline of the last rung (or, with none there, the chosen finalist) has not
    gone ``min_progress`` of the way below it, the trials ended before training took off and
    their order is noise (a plan with adapters next to the head lowers the loss first, a lead
    that did not hold over full runs): the search then returns the preferred baseline (``order``),
    as a finalist (whatever rung the noise cut it at; at the grid's first rate where one trained
    at it) or else as scored on the shared weights.
    ``lr_tested``: the lr stage will test the fallback's rate.  ``start``: the start, if known."""
    cfg = search.cfg
    if best is None or cfg.min_progress <= 0:
        return None, []
    start = start_loss(search, rows) if start is None else start
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "rung" in t.user_attrs]
    last = max((t.user_attrs["rung"] for t in trials), default=None)
    ranked = sorted((t for t in trials if is_baseline(t)),
                    key=lambda t: (-t.user_attrs["rung"], t.value, t.number))
    ref = ranked[0] if ranked and ranked[0].user_attrs["rung"] == last else best
    p = progress(start, ref.value)
    search.signal = {"start_loss": start, "loss": ref.value, "progress": p, "min_progress": cfg.min_progress,
                     "fallback": None}
    lines = [f"- start: held-out loss {start:.4f} (the lower of the untrained model's and the labels' "
             f"prior's); {'the best baseline of the last rung' if ref is not best else 'the chosen plan'}: "
             f"{ref.value:.4f}, a progress of {p:.1%} (`--min-progress` {cfg.min_progress:g})"]
    if p >= cfg.min_progress:
        return None, lines + [""]
    # Any baseline, since the rungs' cuts and the finalists' selection were noise too: a finalist
    # (the latest rung, then the lowest loss) before one only scored on the shared weights.
    pool = ranked + sorted((t for t in scoring.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                            if is_baseline(t)), key=lambda t: (t.value, t.number))
    if not pool:
        return None, lines + ["- the trials ended before training took off, and no uniform-LoRA baseline fits "
                              "the budget: the plan stands, with little evidence behind it", ""]
    # Its rate too is noise here: the one an untested plan gets (the grid's first), not the one
    # whose loss the noise put lowest.
    def off_first_rate(t) -> bool:
        return not (t.user_attrs[PLAN_ATTR]["training"]["lr"] == cfg.lr_grid[0] and math.isfinite(t.value))

    fallback = min(pool, key=lambda t: (preference(order)(t), off_first_rate(t)))
    search.signal["fallback"] = fallback.user_attrs["origin"]
    return fallback, lines + [
        f"- **No signal**: the trials stopped before training took off, so their order is noise. "
        f"The search returns the preferred uniform LoRA that fits ({fallback.user_attrs['origin']}). A larger "
        f"`--cost-budget` (or more training data) gives the trials the steps to get past the start. "
        + ("Its learning rate is chosen by the lr stage below." if lr_tested else
           f"Its learning rate ({fallback.user_attrs[PLAN_ATTR]['training']['lr']:g}) is untested too: train it "
           f"at two or three (`more-train --plan ... --lr`) and keep the lowest held-out loss."), ""]
