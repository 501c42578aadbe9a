"""Several workers (and resumed runs) on one study: who runs a trial, which plan a retried or
interrupted trial trains, and which RUNNING trials are dead.

A trial is tagged with its worker (host, pid, process start time) and its plan seed.  RDB storages
have Optuna's heartbeats; a journal has none, so a RUNNING trial there is dead only when its
worker was on this host and that process is gone.  No function here fails a live worker's trial.
"""
from __future__ import annotations

import os
import warnings
import socket
import time

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
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
    optuna.storages.fail_stale_trials(study)  # a no-op without heartbeats (a journal)
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tag = worker_of(t)
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if (tag is None and now - started > untagged_after_s) or worker_alive(tag) is False:
            _fail_and_retry(study, t)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return sorted(before - after)


def ask_tagged(study: optuna.Study) -> optuna.Trial:
    """``study.ask()`` with this worker's tag, for stages that ask and tell trials themselves."""
    trial = study.ask()
    trial.set_user_attr(WORKER_ATTR, this_worker(trial.number))
    return trial


def fail_dead_running(study: optuna.Study) -> list[int]:
    """Fail (no retry: the stage re-runs its own work) the RUNNING trials of dead or untagged
    workers of this host; a live worker's trial is never touched."""
    dead = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if worker_of(t) is None or worker_alive(worker_of(t)) is False]
    for n in dead:
        study.tell(n, state=TrialState.FAIL)
    return dead


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
