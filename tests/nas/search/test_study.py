"""The Optuna study pieces (nas/search/study.py): samplers and pruners by name or instance, storage
by URL or journal path, stale trials failed and re-queued on resume."""
from __future__ import annotations

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from nas import UserError
from nas.search.study import PRUNERS, SAMPLERS, fail_stale_trials, make_pruner, make_sampler, make_storage


def test_by_name_or_instance():
    assert isinstance(make_pruner("hyperband", 3), optuna.pruners.HyperbandPruner)
    assert isinstance(make_sampler("random", 0), optuna.samplers.RandomSampler)
    mine = optuna.pruners.PercentilePruner(25.0)
    assert make_pruner(mine, 3) is mine
    assert {"hyperband", "halving", "median", "none"} <= set(PRUNERS) and {"tpe", "random"} <= set(SAMPLERS)
    with pytest.raises(UserError, match="unknown sampler 'grid'; choose tpe, random"):
        make_sampler("grid", 0)


def test_storage_a_path_is_a_journal_file(tmp_path):
    for path in (tmp_path / "study.jsonl", tmp_path / "sub" / "shared.log"):
        storage = make_storage(str(path), tmp_path)
        assert isinstance(storage, JournalStorage)
        optuna.create_study(storage=storage, study_name="s")
        assert path.is_file()
    assert isinstance(make_storage(None, tmp_path / "out"), JournalStorage)
    assert (tmp_path / "out" / "study.journal").is_file()
    assert isinstance(make_storage(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path),
                      optuna.storages.RDBStorage)


def test_stale_trials_fail_and_run_again(tmp_path):
    study = optuna.create_study(storage=make_storage(None, tmp_path), study_name="s")
    done = study.ask()
    done.suggest_float("x", 0, 1)
    study.tell(done, 1.0)
    stale = study.ask()
    x = stale.suggest_float("x", 0, 1)  # left RUNNING, as by a killed worker
    assert fail_stale_trials(study) == [stale.number]
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study.trials[-1].system_attrs["fixed_params"] == {"x": x}  # queued again, same parameters
