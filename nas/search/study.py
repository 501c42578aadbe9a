"""The Optuna study: storage, samplers and pruners (by name from a table, or an Optuna instance),
and the resume of trials an interrupted run left unfinished."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from ..errors import UserError

# name -> factory(n_evals); the rungs of the multi-fidelity pruners are the trial's evaluations.
PRUNERS: dict[str, Callable[[int], BasePruner]] = {
    "hyperband": lambda n_evals: optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=n_evals, reduction_factor=3),
    "halving": lambda n_evals: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    "median": lambda n_evals: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    "none": lambda n_evals: optuna.pruners.NopPruner(),
}
# name -> factory(seed)
SAMPLERS: dict[str, Callable[[int], BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=4),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}


def _from_table(spec, base: type, table: dict, what: str, arg):
    """An Optuna instance as given, or the one ``table`` builds for the name ``spec``."""
    if isinstance(spec, base):
        return spec
    if spec not in table:
        raise UserError(f"unknown {what} {spec!r}; choose {', '.join(table)} (or pass an Optuna {base.__name__})")
    return table[spec](arg)


def make_pruner(spec: str | BasePruner, n_evals: int) -> BasePruner:
    return _from_table(spec, BasePruner, PRUNERS, "pruner", n_evals)


def make_sampler(spec: str | BaseSampler, seed: int) -> BaseSampler:
    return _from_table(spec, BaseSampler, SAMPLERS, "sampler", seed)


def make_storage(storage: str | None, output_dir: str | Path):
    """None: a journal file in ``output_dir``; a database URL (``scheme://...``): Optuna's RDB
    storage; anything else: the path of a journal file."""
    if storage is None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(out / "study.journal")))
    if "://" not in storage:
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(storage))
    # Heartbeats let a shared study notice a worker that died and retry its trial once.
    try:
        return RDBStorage(storage, heartbeat_interval=30, grace_period=120,
                          failed_trial_callback=RetryFailedTrialCallback(max_retry=1))
    except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as e:
        raise UserError(f"--storage {storage!r}: Optuna cannot open this database ({e}); give a "
                        f"database URL it supports, or a file path for a journal file") from None


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """On --resume: trials left RUNNING by the killed process never finished; mark them
    failed and queue their parameters again so they are re-run, while finished trials stay."""
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
    return [t.number for t in stale]
