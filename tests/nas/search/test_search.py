"""more-search on a tiny BERT: the budget holds, a killed search resumes without losing or
re-running finished trials, two workers share one journal, and failed trials don't stop it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas import Plan, discover
from nas.cli.search import main as search_main
from nas.models import load_model
from nas.search import SearchConfig, run_search
from tests.factories import search_config, task_folder

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = task_folder(tmp_path_factory.mktemp("search"), 160, 32)
    return d


def config(d: Path, out: Path, **kw) -> SearchConfig:
    return search_config(d, out, **{"n_trials": 4, "trial_steps": 4, "n_evals": 2,
                                    "trial_eval_samples": 32, "strategy": "trials", **kw})


def load_study(out: Path) -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name="more-search", storage=storage)


def test_search_respects_budget_and_writes_outputs(setup, tmp_path):
    res = run_search(config(setup, tmp_path / "out", n_trials=5))
    layout = discover(load_model(str(setup / "model"), num_labels=2))
    plan = Plan.load(tmp_path / "out" / "plan.json")
    plan.validate(layout)
    assert 0 < plan.count_params(layout) <= 3000
    assert plan.trainable_params == plan.count_params(layout)
    assert plan.budget["params"] == 3000
    for t in load_study(tmp_path / "out").trials:  # every trial's plan is within budget too
        assert t.user_attrs["trainable_params"] <= 3000
    assert res.n_complete + res.n_pruned >= 5
    for f in ("report.md", "pareto.png", "proxy_vs_trial.png", "allocation.png", "proxy_scores.json"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    assert "Chosen plan per layer" in (tmp_path / "out" / "report.md").read_text()
    # The plan carries what more-train needs to find the same data again.
    assert plan.task["train_file"] == str(setup / "train.tsv")
    assert plan.provenance["proxy"] and "trial" in plan.provenance


def test_the_plan_records_the_pooling_its_model_declares(setup, tmp_path):
    """--pooling auto: the first token for a model that declares nothing, the mean for a folder whose
    1_Pooling/config.json says so (as the packaged MiniLM's), and the trials train with it."""
    import json
    import shutil

    run_search(config(setup, tmp_path / "plain", n_trials=1))
    assert Plan.load(tmp_path / "plain" / "plan.json").pooling == "cls"
    declared = tmp_path / "model"
    shutil.copytree(setup / "model", declared)
    (declared / "1_Pooling").mkdir()
    (declared / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    run_search(config(setup, tmp_path / "mean", n_trials=1, model=str(declared)))
    assert Plan.load(tmp_path / "mean" / "plan.json").model["pooling"] == "mean"


def test_same_seed_same_plan(setup, tmp_path):
    a = run_search(config(setup, tmp_path / "a", n_trials=3, pruner="none"))
    b = run_search(config(setup, tmp_path / "b", n_trials=3, pruner="none"))
    assert a.plan.modules == b.plan.modules and a.plan.shortcuts == b.plan.shortcuts


def test_refuses_to_overwrite_without_resume(setup, tmp_path):
    run_search(config(setup, tmp_path / "out", n_trials=2))
    rc = search_main(["--model", str(setup / "model"), "--train-file", str(setup / "train.tsv"),
                      "--budget", "3k", "-o", str(tmp_path / "out"), "-q"])
    assert rc == 2


_KILLER = """
import os, sys, json
sys.path.insert(0, {root!r})
import torch; torch.set_num_threads(1)
import nas.train
from nas.search import Search, SearchConfig
cfg = SearchConfig(**json.loads({cfg!r}))
kill_at = int(os.environ.get("KILL_AT_TRIAL", "-1"))
original_objective, original_train, current = Search.objective, nas.train.train, {{}}
def objective(self, trial):
    current["trial"] = trial.number
    return original_objective(self, trial)
def train(*args, **kwargs):
    if current["trial"] == kill_at:
        os._exit(9)  # a hard kill in the middle of a trial: no cleanup, trial left RUNNING
    return original_train(*args, **kwargs)
Search.objective, nas.train.train = objective, train
Search(cfg).run()
"""


def _run_worker(cfg: SearchConfig, env_extra=None, wait=True):
    import dataclasses

    code = _KILLER.format(root=str(ROOT), cfg=json.dumps(dataclasses.asdict(cfg)))
    env = {**os.environ, **(env_extra or {})}
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = p.communicate(timeout=300)
        return p.returncode, out
    return p


def test_resume_after_kill_loses_nothing_and_reruns_nothing(setup, tmp_path):
    out = tmp_path / "out"
    rc, log = _run_worker(config(setup, out, n_trials=5, pruner="none"), {"KILL_AT_TRIAL": "3"})
    assert rc == 9, log
    before = load_study(out).trials
    finished_before = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}
    assert sorted(finished_before) == [0, 1, 2]
    assert [t.state for t in before if t.number == 3] == [TrialState.RUNNING]

    res = run_search(config(setup, out, n_trials=5, pruner="none", resume=True))
    after = load_study(out).trials
    # No finished trial lost: same numbers, same values.
    assert {t.number: t.value for t in after if t.number in finished_before} == finished_before
    # The killed trial is marked failed and its parameters re-run once, in a new trial.
    assert after[3].state == TrialState.FAIL
    retries = [t for t in after if t.system_attrs.get("failed_trial") == 3]
    assert len(retries) == 1 and retries[0].params == after[3].params
    # ... and trains the same plan (its plan seed is the original trial's number).
    assert retries[0].user_attrs["plan_seed"] == 3
    assert retries[0].user_attrs["plan_hash"] == after[3].user_attrs["plan_hash"]
    # No trial run twice: each finished trial's parameters were evaluated once.
    finished = [t for t in after if t.state == TrialState.COMPLETE]
    assert len({json.dumps(t.params, sort_keys=True) for t in finished}) == len(finished)
    assert res.n_complete == 5


def test_two_workers_share_one_journal(setup, tmp_path):
    journal = tmp_path / "shared.journal"
    procs = [
        _run_worker(config(setup, tmp_path / f"w{i}", n_trials=6, pruner="none", storage=f"journal:{journal}",
                           study="shared"), wait=False)  # the same seed: each worker still draws its own
        for i in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="shared", storage=JournalStorage(JournalFileBackend(str(journal))))
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states  # none lost
    assert states.count(TrialState.COMPLETE) >= 6
    assert len({t.number for t in study.trials}) == len(study.trials)
    trained = [t for t in study.trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len({json.dumps(t.params, sort_keys=True) for t in trained}) == len(trained)  # no plan trained twice
    # One answer: both workers' plans are the study's best.
    plans = [json.loads((tmp_path / f"w{i}" / "plan.json").read_text()) for i in range(2)]
    assert plans[0]["provenance"]["trial"] == plans[1]["provenance"]["trial"]
    assert plans[0]["modules"] == plans[1]["modules"]


def test_failed_trials_do_not_stop_the_search(setup, tmp_path, monkeypatch):
    import nas.train as trainer

    real_train = trainer.train
    calls = {"n": 0}

    def flaky(plan, cfg, **kw):
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise trainer.NonFiniteLoss(step=1, value=float("nan"))
        return real_train(plan, cfg, **kw)

    monkeypatch.setattr(trainer, "train", flaky)
    res = run_search(config(setup, tmp_path / "out", n_trials=4, pruner="none"))
    assert res.n_failed >= 1 and res.n_complete >= 2
    assert Plan.load(res.plan_path).modules
