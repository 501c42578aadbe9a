"""The Optuna study pieces (nas/search/study.py, workers.py): samplers and pruners by name or
instance, --storage in the forms Optuna takes (and one message for anything else), a torn journal
line set aside, fresh draws per worker and resume, and only dead workers' trials failed."""
from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from optuna.storages import JournalStorage, RDBStorage
from optuna.trial import TrialState

from nas import UserError
from nas.search.study import (PRUNERS, SAMPLERS, check_study_settings, make_pruner, make_sampler,
                              open_storage, sampler_seed)
from nas.search.workers import WORKER_ATTR, fail_dead_trials, this_worker


def test_by_name_or_instance():
    assert isinstance(make_pruner("hyperband", 3), optuna.pruners.HyperbandPruner)
    assert isinstance(make_sampler("random", 0), optuna.samplers.RandomSampler)
    mine = optuna.pruners.PercentilePruner(25.0)
    assert make_pruner(mine, 3) is mine
    assert {"hyperband", "halving", "median", "none"} <= set(PRUNERS) and {"tpe", "random"} <= set(SAMPLERS)
    with pytest.raises(UserError, match="unknown sampler 'grid'; choose tpe, random"):
        make_sampler("grid", 0)


def test_storage_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for text, path in ((f"journal://{tmp_path}/a.txt", tmp_path / "a.txt"),
                       ("journal:sub/shared.log", tmp_path / "sub" / "shared.log")):
        storage = open_storage(text, tmp_path / "unused")
        assert isinstance(storage, JournalStorage)
        optuna.create_study(storage=storage, study_name="s")
        assert path.is_file()
    # an existing journal, by any name, and the default journal
    assert isinstance(open_storage("sub/shared.log", tmp_path / "unused"), JournalStorage)
    assert isinstance(open_storage(None, tmp_path / "d.journal"), JournalStorage)
    rdb = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "unused", heartbeat_s=1)
    assert isinstance(rdb, RDBStorage) and rdb.get_heartbeat_interval() == 1
    assert rdb.get_failed_trial_callback() is not None  # RetryHeartbeatStaleTrialCallback


@pytest.mark.parametrize("text, message", [
    ("foo://x", "unknown database 'foo'"),
    ("x.txt", "neither a database URL nor a journal"),
    ("/nonexistent/dir/s.journal", "neither a database URL nor a journal"),
    ("journal:///nonexistent/dir/s.journal", "folder '/nonexistent/dir' does not exist"),
    ("sqlite:////nonexistent/dir/x.db", "cannot open sqlite:////nonexistent/dir/x.db"),
    ("postgresql://u:secret@127.0.0.1:1/db", "cannot open postgresql\\+psycopg://u:\\*\\*\\*@127.0.0.1:1/db"),
    ("journal:notes.txt", "exists and is not an Optuna journal"),
])
def test_bad_storage_named_with_the_forms(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("my notes\n")
    with pytest.raises(UserError, match=message) as e:
        open_storage(text, tmp_path / "unused")
    assert "secret" not in str(e.value)
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def _journal_with_trials(path, n=3):
    study = optuna.create_study(storage=open_storage(f"journal:{path}", path), study_name="s")
    for i in range(n):
        study.enqueue_trial({"x": i / 10})
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    return study


def test_torn_last_journal_line_set_aside(tmp_path, capsys):
    path = tmp_path / "study.journal"
    _journal_with_trials(path)
    with open(path, "ab") as f:
        f.write(b'{"op_code": 5, "worker_id": "w", "trial_id"')  # a disk that filled mid-write
    study = optuna.load_study(study_name="s", storage=open_storage(str(path), path))
    assert "set aside a torn last line" in capsys.readouterr().out
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    study = optuna.load_study(study_name="s", storage=open_storage(str(path), path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert [t.params["x"] for t in study.trials[:3]] == [0.0, 0.1, 0.2]
    aside = list(tmp_path.glob("study.journal.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b'{"op_code": 5')


def test_a_bad_line_inside_the_journal_is_not_cut(tmp_path):
    path = tmp_path / "study.journal"
    _journal_with_trials(path, 1)
    text = path.read_bytes()
    path.write_bytes(text + b"garbage\n" + b'{"op_code": 5')
    with pytest.raises(UserError, match="line .* is not a journal record"):
        open_storage(str(path), path)
    assert path.read_bytes() == text + b"garbage\n" + b'{"op_code": 5'


def test_fresh_draws_per_worker_and_resume():
    assert sampler_seed(0, 0) == sampler_seed(0, 0)  # one run stays repeatable
    assert len({sampler_seed(0, 0), sampler_seed(0, 5), sampler_seed(0, 0, 1234), sampler_seed(0, 0, 1235)}) == 4


def test_only_dead_workers_trials_fail(tmp_path):
    study = optuna.create_study(storage=open_storage(None, tmp_path / "j"), study_name="s")
    live, dead, other_host = study.ask(), study.ask(), study.ask()
    for t in (live, dead, other_host):
        t.suggest_float("x", 0, 1)
    live.set_user_attr(WORKER_ATTR, this_worker(live.number))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a finished process: its pid is gone
    dead.set_user_attr(WORKER_ATTR, {**this_worker(dead.number), "pid": child.pid})
    other_host.set_user_attr(WORKER_ATTR, {**this_worker(other_host.number), "host": "elsewhere"})
    assert fail_dead_trials(study) == [dead.number]
    states = [t.state for t in study.trials]
    assert states == [TrialState.RUNNING, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    retry = study.trials[-1]
    assert retry.params == dead.params and retry.system_attrs["failed_trial"] == dead.number
    study.tell(live, 1.0)  # the live worker can still finish its trial


def test_study_settings_stored_then_enforced(tmp_path):
    study = optuna.create_study(storage=open_storage(None, tmp_path / "j"), study_name="s")
    check_study_settings(study, {"budget": "0.1%", "task": "sst2"}, resume=False)
    check_study_settings(study, {"budget": "0.1%", "task": "sst2"}, resume=True)
    with pytest.raises(UserError, match="cannot resume .*budget: study '0.1%', given '1%'; task: study 'sst2'"):
        check_study_settings(study, {"budget": "1%", "task": "mrpc"}, resume=True)
