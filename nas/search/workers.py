"""Several workers (and resumed runs) on one study: who runs a trial, which plan a retried or
interrupted trial trains, and which RUNNING trials are dead; and the jobs through which the
workers of the weight-sharing search split its stages (run_round; weight_sharing.py).

A trial is tagged with its worker (host, pid, process start time) and its plan seed.  RDB storages
have Optuna's heartbeats; a journal has none, so a RUNNING trial there is dead only when its
worker was on this host and that process is gone.  No function here fails a live worker's trial.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass, field

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

WORKER_ATTR, PLAN_SEED_ATTR = "worker", "plan_seed"


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/<pid>/stat): tells a live pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_worker(trial_number: int) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()),
            "trial": trial_number}


def worker_of(t: FrozenTrial) -> dict | None:
    """The trial's worker tag; a tag copied into a retry (by Optuna's retry callback) is not its own."""
    tag = t.user_attrs.get(WORKER_ATTR)
    return tag if isinstance(tag, dict) and tag.get("trial") == t.number else None


def worker_alive(tag: dict | None) -> bool | None:
    """True/False for a worker of this host; None when it cannot be told (another host)."""
    if not tag or tag.get("host") != socket.gethostname():
        return None
    start = _start_time(int(tag["pid"]))
    return start is not None and start == tag.get("start")


def plan_seed(trial: optuna.Trial) -> int:
    """The trial number whose plan this trial trains: its own, or the one a retry or an
    interrupted run re-queued (so a retried trial trains the same plan)."""
    seed = trial.user_attrs.get(PLAN_SEED_ATTR)
    if seed is None:
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            seed = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    if seed is None:
        seed = trial.number
    trial.set_user_attr(PLAN_SEED_ATTR, int(seed))
    trial.set_user_attr(WORKER_ATTR, this_worker(trial.number))
    return int(seed)


def same_plan_trial(trial: optuna.Trial, plan_hash: str, poll_s: float, max_wait_s: float = 600.0):
    """A finished trial that trained this plan, after waiting for an earlier trial that is training
    it now (another worker); None: train it."""
    t0 = time.time()
    while True:
        same = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
                if t.number != trial.number and t.user_attrs.get("plan_hash") == plan_hash]
        done = [t for t in same if t.state == TrialState.COMPLETE]
        if done or not any(t.number < trial.number and worker_alive(worker_of(t)) is not False
                           for t in same) or time.time() - t0 > max_wait_s:
            return done[0] if done else None
        time.sleep(poll_s)


def requeue_interrupted(trial: optuna.Trial, seed: int) -> None:
    """Ctrl-C: queue the trial's parameters with its plan seed, so --resume trains that plan, and
    keep Optuna from printing 'Trial failed' with a traceback for it."""
    trial.study.enqueue_trial(trial.params, user_attrs={"interrupted": trial.number, PLAN_SEED_ATTR: seed},
                              skip_if_exists=False)
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _fail_and_retry(study: optuna.Study, t: FrozenTrial) -> None:
    try:
        failed = study.tell(t.number, state=TrialState.FAIL)
    except (RuntimeError, ValueError):  # finished meanwhile
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=1)(study, failed)


def fail_dead_trials(study: optuna.Study, untagged_after_s: float = 60.0) -> list[int]:
    """Fail (and queue one retry of) the RUNNING trials whose worker is dead: stale heartbeats on
    an RDB storage, a gone process of this host on a journal, or no worker tag long after the
    start (killed between ask and tag).  Trials of live or unknown workers stay RUNNING."""
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a no-op without heartbeats (a journal)
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tag = worker_of(t)
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if (tag is None and now - started > untagged_after_s) or worker_alive(tag) is False:
            _fail_and_retry(study, t)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return sorted(before - after)


def drain(study: optuna.Study, run_waiting, poll_s: float, grace_s: float) -> None:
    """After this worker's share of trials: fail dead workers' trials, run the queued retries and
    wait while other workers' trials run, so the study's answer is final when this returns.  The
    wait is capped (3x the longest finished trial, at least a minute)."""
    deadline = None
    while True:
        fail_dead_trials(study, untagged_after_s=grace_s)
        trials = study.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if waiting:
            run_waiting(waiting)
            deadline = None
            continue
        if not any(t.state == TrialState.RUNNING for t in trials):
            return
        if deadline is None:
            spans = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                     if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete]
            deadline = time.time() + max(60.0, 3 * max(spans, default=0.0))
        if time.time() > deadline:
            print("note: other workers' trials are still running; their results will be in the study, "
                  "not in this worker's plan")
            return
        time.sleep(poll_s)


# ---- jobs: work that the workers of one study do once between them -------------------------
# A stage's work is a round of jobs, each a trial keyed by JOB_ATTR: queued (WAITING) once under a
# lock, popped by one worker (Optuna's WAITING -> RUNNING is atomic on journal and RDB storages),
# and queued again when its worker dies.  A round's next one is a function of the study alone, so
# every worker computes the same plan of work whatever worker ran what.
JOB_ATTR = "job"


@dataclass
class Job:
    key: str
    attrs: dict = field(default_factory=dict)
    params: dict | None = None  # with their distributions: what Optuna shows for the trial
    distributions: dict | None = None


def lock_name(name: str) -> str:
    return f"{name}.lock"


def round_kw(cfg, name: str) -> dict:
    """run_round's settings for a search: a quick poll (a worker waits on others at every round),
    dead workers' trials failed after two heartbeats."""
    return {"lock": lock_name(name), "poll_s": min(1.0, cfg.heartbeat_s), "grace_s": 2 * cfg.heartbeat_s}


@contextlib.contextmanager
def storage_lock(storage, name: str, poll_s: float = 0.05, stale_s: float = 60.0):
    """A mutex over every worker of ``storage``: the study ``name`` exists while it is held
    (creating a study is atomic: one creator wins).  Held only for a check and a few writes, so
    a lock whose worker is gone, or that stays for ``stale_s``, is broken (deleted by its id: a
    newer lock of the same name is not touched)."""
    seen: dict[int, float] = {}
    while True:
        try:
            sid = storage.create_new_study([StudyDirection.MINIMIZE], name)
            storage.set_study_user_attr(sid, WORKER_ATTR, this_worker(-1))
            break
        except optuna.exceptions.DuplicatedStudyError:
            pass
        except KeyError:  # broken as stale between the two writes: try again
            continue
        try:
            held = storage.get_study_id_from_name(name)
            tag = storage.get_study_user_attrs(held).get(WORKER_ATTR)
        except KeyError:  # released meanwhile
            continue
        if worker_alive(tag) is False or time.time() - seen.setdefault(held, time.time()) > stale_s:
            _delete_study(storage, held)
        else:
            time.sleep(poll_s)
    try:
        yield
    finally:
        _delete_study(storage, sid)


def _delete_study(storage, sid: int) -> None:
    try:
        storage.delete_study(sid)
    except KeyError:  # deleted by another worker
        pass


def job_states(study: optuna.Study, keys) -> tuple[dict[str, FrozenTrial | None], set[str], set[str]]:
    """(done: key -> its COMPLETE trial, or None when it failed by itself (an ``error``, as a NaN
    loss); pending: keys queued or running; missing: keys with neither, never queued or whose
    worker died)."""
    keys, done, pending = set(keys), {}, set()
    for t in study.get_trials(deepcopy=False):
        k = t.user_attrs.get(JOB_ATTR)
        if k not in keys:
            continue
        if t.state == TrialState.COMPLETE:
            done.setdefault(k, t)
        elif t.state == TrialState.FAIL and "error" in t.user_attrs:
            done.setdefault(k, None)
        elif t.state in (TrialState.WAITING, TrialState.RUNNING):
            pending.add(k)
    pending -= set(done)
    return done, pending, keys - set(done) - pending


def enqueue_missing(study: optuna.Study, jobs: list[Job], lock: str) -> None:
    """Queue the jobs that have no trial queued, running or done: once, under the lock."""
    with storage_lock(study._storage, lock):
        _, _, missing = job_states(study, [j.key for j in jobs])
        for j in jobs:
            if j.key in missing:
                study.add_trial(optuna.trial.create_trial(
                    state=TrialState.WAITING, params=j.params, distributions=j.distributions,
                    user_attrs={**j.attrs, JOB_ATTR: j.key}))


def pop_job(study: optuna.Study, key: str) -> optuna.Trial | None:
    """The queued trial of job ``key``, now RUNNING for this worker, or None (another took it)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if t.user_attrs.get(JOB_ATTR) != key:
            continue
        try:
            if not study._storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        trial = optuna.Trial(study, t._trial_id)
        trial.set_user_attr(WORKER_ATTR, this_worker(trial.number))
        return trial
    return None


@contextlib.contextmanager
def heartbeat(trial: optuna.Trial):
    """Optuna's heartbeats for a popped trial on an RDB storage (``study.optimize`` sends them for
    its own trials): a worker that dies on another host is noticed when they stop."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    with get_heartbeat_thread(trial._trial_id, trial.storage):
        yield


def run_round(study: optuna.Study, jobs: list[Job], run, *, lock: str, poll_s: float = 1.0,
              grace_s: float = 60.0) -> dict[str, FrozenTrial | None]:
    """Every job of ``jobs`` done once by the workers of ``study``: this worker runs one queued job
    at a time (``run(job)`` pops it with pop_job, trains or scores, and tells its trial), waits
    while others run the rest, fails the trials of dead workers and queues their jobs again.
    Returns each key's COMPLETE trial (None: it failed by itself), when all are done."""
    by_key = {j.key: j for j in jobs}
    while True:
        fail_dead_trials(study, untagged_after_s=grace_s)
        done, pending, missing = job_states(study, by_key)
        if missing:
            enqueue_missing(study, [by_key[k] for k in sorted(missing, key=list(by_key).index)], lock)
            continue
        if not pending:
            return done
        queued = {t.user_attrs.get(JOB_ATTR) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
        job = next((j for j in jobs if j.key in pending and j.key in queued), None)
        if job is not None:
            run(job)
        else:
            time.sleep(poll_s)


def decide_once(study: optuna.Study, key: str, compute, lock: str):
    """A value that every worker of ``study`` must use alike (it steers what they run): a worker
    that finds none stored computes one, the first stored (under the lock) is the one all use, a
    resume included.  JSON, as a study attribute."""
    value = study.user_attrs.get(key)
    if value is None:
        mine = json.loads(json.dumps(compute()))
        with storage_lock(study._storage, lock):
            value = study.user_attrs.get(key)
            if value is None:
                study.set_user_attr(key, mine)
                value = mine
    return value


def write_once(search, stages: optuna.Study, name: str, finish):
    """``finish()`` (what follows the finalists: the lr stage, then plan.json and the report; it
    returns the SearchResult) run by one worker of the study, a job like any other; the others
    wait for it and return its result from the study, writing plan.json where their -o lacks it
    (a worker on another machine)."""
    from ..plan import Plan
    from .config import SearchResult

    mine = {}

    def run(job):
        trial = pop_job(stages, "report")
        if trial is None:
            return
        with heartbeat(trial):
            res = mine["res"] = finish()
            trial.set_user_attr("result", {"plan": res.plan.to_dict(), "best_value": res.best_value,
                                           "counts": [res.n_complete, res.n_pruned, res.n_failed]})
            stages.tell(trial, res.best_value if res.best_value == res.best_value else float("inf"))

    done = run_round(stages, [Job("report")], run, **round_kw(search.cfg, name))
    if "res" in mine:
        return mine["res"]
    got = done["report"].user_attrs["result"]
    plan, path = Plan.from_dict(got["plan"]), search.out / "plan.json"
    if not path.is_file():
        plan.save(path)
    return SearchResult(plan=plan, plan_path=path, best_value=got["best_value"], n_complete=got["counts"][0],
                        n_pruned=got["counts"][1], n_failed=got["counts"][2], stage_seconds=dict(search.stage_seconds),
                        cost=plan.provenance.get("search_cost", {}))
