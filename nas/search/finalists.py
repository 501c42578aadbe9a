"""The finalists: the best plans on the shared weights and the uniform-LoRA baselines, each at
every learning rate of a small grid, trained for real (warm-started from the shared weights)
and cut by successive halving on held-out loss, where a cut needs a difference beyond noise;
a searched plan wins over the baselines only by a difference beyond noise."""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from .. import train as training
from ..plan import Plan
from .config import PLAN_ATTR
from .ranking import constant_loss, heldout, worse_beyond_noise
from .study import check_study_settings, study_settings
from .workers import ask_tagged, fail_dead_running


@dataclass
class Finalist:
    cid: str  # "<origin>@<lr>"
    origin: str
    plan: Plan
    lr: float
    shared_loss: float


def pick_finalists(scoring: optuna.Study, n_plans: int, lr_grid, limit: int,
                   order: tuple[str, ...]) -> list[Finalist]:
    """At most ``limit`` finalists, in priority order: at the grid's first learning rate the best
    searched plan on the shared weights, the baselines (in ``order``), the next
    ``n_plans - 1`` distinct searched plans; then the same at the next rate, and so on.  Whatever
    the budget cuts off, the plan and the baselines are compared at the same rates."""
    done = sorted(scoring.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                  key=lambda t: (t.value, t.number))
    plans, baselines, hashes = [], [], set()
    for t in done:
        h = t.user_attrs["plan_hash"]
        if h in hashes or t.user_attrs.get("duplicate"):
            continue
        hashes.add(h)
        if is_baseline(t):
            baselines.append(t)
        elif len(plans) < n_plans:
            plans.append(t)

    def fin(t, lr):
        origin = f"{t.user_attrs['origin']} #{t.number}"
        return Finalist(f"{origin}@{lr:g}", origin, Plan.from_dict(t.user_attrs[PLAN_ATTR]), float(lr), t.value)

    baselines.sort(key=preference(order))  # the preferred first: a small budget trains it
    queue = [fin(t, lr) for lr in lr_grid for t in plans[:1] + baselines + plans[1:]]
    return queue[:limit]


def n_finalist_candidates(n_plans: int, n_baselines: int, n_lrs: int) -> int:
    return (n_plans + n_baselines) * n_lrs


def run_finalists(search, shared, finalists: list[Finalist], storage, name: str, rows,
                  step_budget: int) -> tuple[optuna.Study, optuna.trial.FrozenTrial | None]:
    """Successive halving: a rung trains every survivor afresh from the shared weights, with
    the steps the budget left affords if no later rung cut anything (so a rung trains each
    survivor ``eta`` times longer than the one before it, or more after cuts).  After a rung, a
    finalist outside the best ``1/eta`` is cut only when its per-row held-out losses are worse
    than the leader's beyond noise (a paired test).  Every (finalist, rung) is one trial in the
    study: a resumed search re-runs none that finished.  Returns the study and the best trial
    of the last rung reached."""
    cfg = search.cfg
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True)
    check_study_settings(study, study_settings(cfg), cfg.resume)
    fail_dead_running(study)  # an interrupted run's: its finalist is trained again
    alive, left, best = list(finalists), step_budget, None
    # The Trainer's own final evaluation runs on one batch; the held-out rows are scored here.
    data = dataclasses.replace(search.trial_data, eval=search.trial_data.eval.select(range(1)))
    for rung in range(cfg.rungs):
        # A lone finalist takes all that is left: there is nothing to compare it with.
        later = 1 if len(alive) == 1 else sum(cfg.eta ** k for k in range(cfg.rungs - rung))
        steps = left // (max(len(alive), 1) * later)
        if steps < 1:
            break
        left -= steps * len(alive)
        done = {(t.user_attrs.get("cid"), t.user_attrs.get("rung")): t
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        results = []
        for f in alive:
            t = done.get((f.cid, rung))
            if t is None or t.user_attrs.get("steps") != steps:
                t = _train_one(search, shared, study, f, rung, steps, data, rows)
            if t is not None:
                results.append((f, t))
        if not results:
            break
        results.sort(key=lambda ft: (ft[1].value, ft[1].number))
        best = proven_best([t for _, t in results], cfg.noise_z, shared.preferred)
        keep = max(1, math.ceil(len(results) / cfg.eta))
        lead = results[0][1].user_attrs["rows"]
        alive = [f for i, (f, t) in enumerate(results)
                 if i < keep or not worse_beyond_noise(t.user_attrs["rows"], lead, cfg.noise_z)]
        if len(alive) == 1:
            break
    return study, best


def is_baseline(t) -> bool:
    return t.user_attrs["origin"].startswith("baseline")


def preference(order: tuple[str, ...]):
    """A sort key: the rank of a trial's origin in ``order`` (origins such as "baseline mlp",
    most preferred first: nas.baselines.preferred); anything else after them."""
    def rank(t) -> int:
        return next((i for i, p in enumerate(order) if t.user_attrs["origin"].startswith(p)), len(order))
    return rank


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


def progress(start_loss: float, loss: float) -> float:
    """How far training has lowered the held-out loss, as a share of the start."""
    return (start_loss - loss) / start_loss if start_loss > 0 else float("nan")


def without_signal(search, study, scoring, best, rows, order: tuple[str, ...]):
    """(fallback trial or None, report lines).  The start is the lower of the untrained model's
    held-out loss and the labels' prior (learning the class frequencies is no signal); when the
    finalists' best baseline of the last rung (or, with none there, the chosen finalist) has not
    gone ``min_progress`` of the way below it, the trials ended before training took off and
    their order is noise (a plan with adapters next to the head lowers the loss first, a lead
    that did not hold over full runs): the search then returns the preferred baseline (``order``),
    as a finalist (whatever rung the noise cut it at) or else as scored on the shared weights."""
    from ..train.precision import resolve_device

    cfg = search.cfg
    if best is None or cfg.min_progress <= 0:
        return None, []
    untrained = copy.deepcopy(search.base).to(resolve_device(cfg.device))
    start = heldout(untrained, search.trial_data, rows, batch_size=cfg.batch_size).loss
    del untrained
    prior = constant_loss(search.trial_data, rows)
    start = start if prior is None else min(start, prior)
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
    fallback = min(pool, key=preference(order))
    search.signal["fallback"] = fallback.user_attrs["origin"]
    return fallback, lines + [
        f"- **No signal**: the trials stopped before training took off, so their order is noise. "
        f"The search returns the preferred uniform LoRA that fits ({fallback.user_attrs['origin']}). A larger "
        f"`--cost-budget` (or more training data) gives the trials the steps to get past the start. "
        f"Its learning rate ({fallback.user_attrs[PLAN_ATTR]['training']['lr']:g}) is untested too: train it at "
        f"two or three (`more-train --plan ... --lr`) and keep the lowest held-out loss.", ""]


def trial_config(cfg, plan: Plan, steps: int, lr: float, seed: int) -> training.TrainConfig:
    """How a finalist trains: ``steps`` steps of ``plan`` at ``lr`` (a schedule over the trial),
    the search's batching and precision, nothing written."""
    return training.TrainConfig.from_plan(
        plan, max_steps=steps, eval_every=steps, seed=seed, lr=lr, batch_size=cfg.batch_size,
        max_length=cfg.max_length, allocation="static", output_dir=None, progress=False,
        group_by_length=cfg.group_by_length, device=cfg.device, bf16=cfg.bf16, fp16=cfg.fp16)


def _train_one(search, shared, study, f: Finalist, rung: int, steps: int, data, rows):
    cfg = search.cfg
    trial = ask_tagged(study)
    plan = copy.deepcopy(f.plan)
    plan.training["lr"] = f.lr
    for k, v in {"cid": f.cid, "origin": f.origin, "rung": rung, "steps": steps, "lr": f.lr,
                 "shared_loss": f.shared_loss, "main_metric": search._data.main_metric, "trainable_params": plan.trainable_params,
                 PLAN_ATTR: plan.to_dict()}.items():
        trial.set_user_attr(k, v)
    model = copy.deepcopy(search.base)
    tcfg = trial_config(cfg, plan, steps, f.lr, cfg.seed)
    try:
        trainer = training.prepare(plan, tcfg, model=model, tokenizer=search._tokenizer, data=data)
        _, unexpected = model.load_state_dict(shared.warm_state(plan), strict=False)
        if unexpected:
            raise RuntimeError(f"warm start: the plan's model has no {unexpected[:3]}")
        result = training.run(trainer)
    except (training.NonFiniteLoss, RuntimeError, ValueError) as e:
        trial.set_user_attr("error", str(e)[:300])
        study.tell(trial, state=TrialState.FAIL)
        return None
    ho = heldout(model, search.trial_data, rows, batch_size=cfg.batch_size)
    trial.set_user_attr("metrics", {**ho.metrics, "loss": ho.loss, "loss_se": ho.se})
    trial.set_user_attr("rows", ho.rows)
    trial.set_user_attr("train_time_s", result.train_time_s)
    trial.set_user_attr("step_time_s", result.step_time_s)
    trial.set_user_attr("step_cpu_s", result.step_cpu_s)
    study.tell(trial, ho.loss)
    return next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)


# ---- the whole weight-sharing strategy -----------------------------------------------------
def check_config(cfg) -> None:
    """Raise a UserError naming the field and the fix for a value the stages cannot use."""
    from ..errors import UserError

    problems = []
    if not cfg.cost_budget > 0:
        problems.append(f"--cost-budget {cfg.cost_budget} must be above 0, e.g. 0.5")
    for name in ("supernet_share", "scoring_share"):
        if not 0 < getattr(cfg, name) < cfg.cost_budget:
            problems.append(f"--{name.replace('_', '-')} {getattr(cfg, name)} must be above 0 and "
                            f"below --cost-budget {cfg.cost_budget}")
    if not cfg.lr_grid or any(not lr > 0 for lr in cfg.lr_grid):
        problems.append(f"--lr-grid {cfg.lr_grid} needs one or more learning rates above 0, e.g. 1e-3,5e-4")
    if cfg.rungs < 1 or cfg.eta < 2 or cfg.n_finalists < 1 or cfg.scoring_rows < 2:
        problems.append("--rungs and --n-finalists must be at least 1, --eta at least 2, "
                        "--scoring-rows at least 2")
    if problems:
        raise UserError("; ".join(problems))


def weight_sharing_search(search):
    """Super-network -> importance -> cheap scoring -> finalists, each stage sized from
    ``cfg.cost_budget``.  Returns (finalist study, best trial, stage sizes, report lines)."""
    from ..baselines import baselines_at
    from .cost import size_stages
    from .supernet import SharedWeights, score_plans

    cfg = search.cfg
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, name = search.open_storage(), cfg.study or "more-search"
    n_base = len(baselines_at(search.layout, search.budget))
    ev = search.trial_data.eval
    rows = ev.select(range(min(cfg.scoring_rows, len(ev))))
    search.n_score_rows = len(rows)
    sizes = search.sizes = size_stages(
        n_train=len(search._data.train), batch_size=cfg.batch_size, epochs=cfg.epochs,
        cost_budget=cfg.cost_budget, supernet_share=cfg.supernet_share, scoring_share=cfg.scoring_share,
        eval_rows=len(rows), n_finalists=n_finalist_candidates(cfg.n_finalists, n_base, len(cfg.lr_grid)),
        rungs=cfg.rungs, eta=cfg.eta, proxy_batches=search.n_proxy_batches if search.proxy_plan is not None else 0,
        n_candidates=len(search.candidates), min_scored=2 + n_base + (search.proxy_plan is not None))
    def mark(name, t0, c0):
        search.stage_seconds[name] = time.perf_counter() - t0
        search.stage_cpu[name] = time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    shared = SharedWeights(search)
    meta = shared.train_or_load()
    mark("supernet", t0, c0)
    if cfg.progress:
        print(f"super-network: {meta['steps']} steps{' (reused)' if meta.get('reused') else ''}; "
              f"scoring {sizes.scored_plans} plans, then {sizes.finalists} finalists")
    t0, c0 = time.perf_counter(), time.process_time()
    scoring = score_plans(search, shared, sizes, storage, name, rows)
    mark("scoring", t0, c0)
    t0, c0 = time.perf_counter(), time.process_time()
    finalists = pick_finalists(scoring, cfg.n_finalists, cfg.lr_grid, sizes.finalists, shared.preferred)
    study, best = run_finalists(search, shared, finalists, storage, name, rows, sizes.finalist_step_budget)
    mark("finalists", t0, c0)
    fallback, signal = without_signal(search, study, scoring, best, rows, shared.preferred)
    if fallback is not None:
        best = fallback
    if best is None:  # no finalist trained (budget too small): the best plan on shared weights
        study, best = scoring, scoring.best_trial
    plan_sizes = {**sizes.to_dict(), "planned_multiple": round(sizes.planned(), 4),
                  "supernet_step_time_s": meta["step_time_s"]}
    from .summary import report_lines

    return study, best, plan_sizes, report_lines(search, meta, scoring, study, best, signal)
