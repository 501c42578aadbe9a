"""The finalists stage of the weight-sharing search (weight_sharing.py runs the stages): the
best plans on the shared weights and the uniform-LoRA baselines, each at every learning rate of
a small grid, trained for real (warm-started from the shared weights) and cut by successive
halving on held-out loss, where a cut needs a difference beyond noise."""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from .. import train as training
from ..io import pause_for_test
from ..plan import Plan
from .config import PLAN_ATTR
from .ranking import heldout, worse_beyond_noise
from .study import check_study_settings, study_settings
from .workers import Job, heartbeat, pop_job, round_kw, run_round


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
    the budget cuts off, the plan and the baselines are compared at the same rates.  Room for one
    alone: the preferred baseline, since a searched plan must beat one to be returned."""
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
    if limit == 1 and baselines:
        return [fin(baselines[0], lr_grid[0])]
    queue = [fin(t, lr) for lr in lr_grid for t in plans[:1] + baselines + plans[1:]]
    return queue[:limit]


def n_finalist_candidates(n_plans: int, n_baselines: int, n_lrs: int) -> int:
    return (n_plans + n_baselines) * n_lrs


def run_finalists(search, shared, finalists: list[Finalist], storage, name: str, rows, step_budget: int,
                  stop_above: float | None = None) -> tuple[optuna.Study, list[optuna.trial.FrozenTrial], int]:
    """Successive halving: a rung trains every survivor afresh from the shared weights, with
    the steps the budget left affords if no later rung cut anything (so a rung trains each
    survivor ``eta`` times longer than the one before it, or more after cuts).  After a rung, a
    finalist outside the best ``1/eta`` is cut only when its per-row held-out losses are worse
    than the leader's beyond noise (a paired test).  Every (finalist, rung) is one trial in the
    study, a job that the workers sharing the study run once between them (workers.run_round);
    each worker then cuts the rung alike from the study.  A resumed search re-runs none that
    finished.  Returns the study, the trials of the
    last rung reached, by held-out loss (empty if none trained; weight_sharing.proven_best
    picks the returned plan among them), and the steps of the budget left unspent.
    ``stop_above``: a held-out loss; when a rung's leader is not below it (training has not left
    the start), the later rungs are not run and their steps are returned unspent, for a stage that
    can measure something with them (the lr stage).  Stopping before the last rung sets
    ``search.finalists_stopped`` to (rung, why), which the report states."""
    cfg = search.cfg
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True)
    check_study_settings(study, study_settings(cfg), cfg.resume)
    alive, left, ranked = list(finalists), step_budget, []
    # The Trainer's own final evaluation runs on one batch; the held-out rows are scored here.
    data = train_part(search)
    for rung in range(cfg.rungs):
        # A lone finalist takes all that is left: there is nothing to compare it with.
        later = 1 if len(alive) == 1 else sum(cfg.eta ** k for k in range(cfg.rungs - rung))
        steps = left // (max(len(alive), 1) * later)
        if steps < 1:
            break
        left -= steps * len(alive)
        todo = {job_key(f, rung, steps): f for f in alive}
        done = run_round(study, [Job(k) for k in todo],
                         lambda job: _train_one(search, shared, study, todo[job.key], rung, steps, data, rows),
                         **round_kw(cfg, name))
        results = [(f, done[k]) for k, f in todo.items() if done.get(k) is not None]
        if not results:
            break
        # ties by priority, not by trial number (which depends on which worker asked first)
        results.sort(key=lambda ft: (ft[1].value, alive.index(ft[0])))
        ranked = [t for _, t in results]
        keep = max(1, math.ceil(len(results) / cfg.eta))
        lead = results[0][1].user_attrs["rows"]
        alive = [f for i, (f, t) in enumerate(results)
                 if i < keep or not worse_beyond_noise(t.user_attrs["rows"], lead, cfg.noise_z)]
        if rung == cfg.rungs - 1:
            break
        if len(alive) == 1:  # (a lone finalist from the start took every step in this rung)
            if len(results) > 1:
                search.finalists_stopped = (rung, f"one finalist was left ({len(results) - 1} worse beyond noise), "
                                                  "so a longer rung would compare nothing")
            break
        if stop_above is not None and not results[0][1].value < stop_above:
            search.finalists_stopped = (rung, f"its leader's held-out loss ({results[0][1].value:.4f}) had not left "
                                              "the start, so a longer rung would decide nothing")
            break
    return study, ranked, left


def train_part(search):
    """The search's trial data for a short trial: the Trainer's own final evaluation runs on one
    batch (the held-out rows are scored by ranking.heldout)."""
    return dataclasses.replace(search.trial_data, eval=search.trial_data.eval.select(range(1)))


def is_baseline(t) -> bool:
    return t.user_attrs["origin"].startswith("baseline")


def preference(order: tuple[str, ...]):
    """A sort key: the rank of a trial's origin in ``order`` (origins such as "baseline mlp",
    most preferred first: nas.baselines.preferred); anything else after them."""
    def rank(t) -> int:
        return next((i for i, p in enumerate(order) if t.user_attrs["origin"].startswith(p)), len(order))
    return rank


def trial_config(cfg, plan: Plan, steps: int, lr: float, seed: int) -> training.TrainConfig:
    """How a finalist trains: ``steps`` steps of ``plan`` at ``lr`` (a schedule over the trial),
    the search's batching and precision, nothing written."""
    return training.TrainConfig.from_plan(
        plan, max_steps=steps, eval_every=steps, seed=seed, lr=lr, batch_size=cfg.batch_size,
        max_length=cfg.max_length, allocation="static", output_dir=None, progress=False,
        group_by_length=cfg.group_by_length, device=cfg.device, bf16=cfg.bf16, fp16=cfg.fp16)


def job_key(f: Finalist, rung: int, steps: int) -> str:
    return f"{f.cid} | rung {rung} | {steps} steps"


def _train_one(search, shared, study, f: Finalist, rung: int, steps: int, data, rows):
    """Train finalist ``f`` at ``rung`` if its queued job is still there to take (None: another
    worker took it, or the trial failed)."""
    trial = pop_job(study, job_key(f, rung, steps))
    if trial is None:
        return None
    with heartbeat(trial):
        return _train_popped(search, shared, study, trial, f, rung, steps, data, rows)


def _train_popped(search, shared, study, trial, f: Finalist, rung: int, steps: int, data, rows):
    cfg = search.cfg
    plan = copy.deepcopy(f.plan)
    plan.training["lr"] = f.lr
    for k, v in {"cid": f.cid, "origin": f.origin, "rung": rung, "steps": steps, "lr": f.lr,
                 "shared_loss": f.shared_loss, "main_metric": search._data.main_metric, "trainable_params": plan.trainable_params,
                 PLAN_ATTR: plan.to_dict()}.items():
        trial.set_user_attr(k, v)
    pause_for_test("finalist", search.out)
    try:
        ho, result = short_run(search, plan, trial_config(cfg, plan, steps, f.lr, cfg.seed), data, rows,
                               shared.warm_state(plan))
    except TRIAL_ERRORS as e:
        trial.set_user_attr("error", str(e)[:300])
        study.tell(trial, state=TrialState.FAIL)
        return None
    trial.set_user_attr("metrics", {**ho.metrics, "loss": ho.loss, "loss_se": ho.se})
    trial.set_user_attr("rows", ho.rows)
    trial.set_user_attr("train_time_s", result.train_time_s)
    trial.set_user_attr("step_time_s", result.step_time_s)
    trial.set_user_attr("step_cpu_s", result.step_cpu_s)
    study.tell(trial, ho.loss)
    return next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)


TRIAL_ERRORS = (training.NonFiniteLoss, RuntimeError, ValueError)  # a failed trial, not a failed search


def short_run(search, plan: Plan, tcfg, data, rows, warm: dict | None = None):
    """Train ``plan`` on a copy of the search's base model (from its fresh init, or from ``warm``
    weights) and score it on the held-out ``rows``: (HeldOut, TrainResult)."""
    model = copy.deepcopy(search.base)
    trainer = training.prepare(plan, tcfg, model=model, tokenizer=search._tokenizer, data=data)
    if warm is not None:
        _, unexpected = model.load_state_dict(warm, strict=False)
        if unexpected:
            raise RuntimeError(f"warm start: the plan's model has no {unexpected[:3]}")
    result = training.run(trainer)
    return heldout(model, search.trial_data, rows, batch_size=search.cfg.batch_size), result
