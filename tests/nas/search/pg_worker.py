"""A search worker on a shared study, with a trivial objective instead of training a plan.

Run as ``python -m tests.nas.search.pg_worker URL STUDY N_COMPLETE TRIAL_SECONDS [--drain]
[--heartbeat S] [--go FILE]``.  It sets up the storage the way the engine does (nas.search.study.open_storage);
``--heartbeat`` shortens Optuna's heartbeat so a test sees a dead worker within seconds.
``--drain``: after N trials are complete, wait for the other workers' RUNNING trials and run
the retries of those whose worker died (what the engine must do before writing the result).
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from nas.search.study import open_storage


def storage_for(url: str, heartbeat: int | None):
    return open_storage(url, ".", heartbeat_s=heartbeat or 30)  # as the engine opens it


def plan_seed(trial: optuna.Trial) -> int:
    """The seed of a trial's plan: the original trial's number, so a retry trains the same plan."""
    frozen = trial.study.get_trials(deepcopy=False)[trial.number]
    orig = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return trial.number if orig is None else orig


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url"), p.add_argument("study")
    p.add_argument("n", type=int), p.add_argument("seconds", type=float)
    p.add_argument("--drain", action="store_true")
    p.add_argument("--heartbeat", type=int)
    p.add_argument("--go", help="print 'ready', then start only once this file exists")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=storage_for(args.url, args.heartbeat),
                              sampler=optuna.samplers.RandomSampler())  # unseeded: workers differ

    if args.go:  # workers start their trials together, however long each took to import
        print("ready", flush=True)
        while not os.path.exists(args.go):
            time.sleep(0.05)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("worker", os.getpid())
        trial.set_user_attr("plan_seed", plan_seed(trial))
        print(f"started {trial.number}", flush=True)
        time.sleep(args.seconds)
        return x

    study.optimize(objective, callbacks=[
        optuna.study.MaxTrialsCallback(args.n, states=(TrialState.COMPLETE,))])
    while args.drain:
        fail_stale_trials(study)  # fails dead workers' trials and queues their retries
        trials = study.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if waiting:
            study.optimize(objective, n_trials=waiting)
        elif any(t.state == TrialState.RUNNING for t in trials):
            time.sleep(0.5)
        else:
            break


if __name__ == "__main__":
    main()
