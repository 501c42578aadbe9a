"""--resume checks what it resumes (the study's budget, task, space and model), and Ctrl-C in a
trial exits 130 with one line and queues that trial again so --resume trains its plan."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.cli.search import main as search_main
from nas.search.study import open_storage
from tests.factories import make_tiny_bert, write_sentiment

ROOT = Path(__file__).resolve().parents[3]
# The trial strategy: Ctrl-C and resume are drilled on its Optuna trials.
FAST = ["-q", "--strategy", "trials", "--budget", "3k", "--max-length", "24", "--batch-size", "8",
        "--max-train-samples", "48"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    make_tiny_bert(d / "model")
    make_tiny_bert(d / "model2", seed=1)
    write_sentiment(d / "train.tsv", 64, seed=1)
    write_sentiment(d / "other.tsv", 64, seed=4)
    write_sentiment(d / "dev.tsv", 16, seed=2)
    return d


def _args(d, out, **over):
    flags = {"--model": str(d / "model"), "--train-file": str(d / "train.tsv"),
             "--validation-file": str(d / "dev.tsv"), "-o": str(out), "--trials": "1", "--trial-steps": "2",
             **over}
    return FAST + [x for kv in flags.items() for x in kv]


def _study(out):
    return optuna.load_study(study_name="more-search", storage=open_storage(None, out / "study.journal"))


@pytest.mark.parametrize("flag, value, named", [
    ("--budget", "4k", "budget: study '3k', given '4k'"),
    ("--space", "lora", "space: study"),
    ("--model", "model2", "model: study"),
    ("--train-file", "other.tsv", "train_file: study"),
])
def test_resume_refuses_other_settings(files, tmp_path, capsys, flag, value, named):
    out = tmp_path / "s"
    assert search_main(_args(files, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    value = str(files / value) if flag in ("--model", "--train-file") else value
    rc = search_main(_args(files, out, **{flag: value, "--trials": "2"}) + ["--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot resume study 'more-search': its settings differ (" + named in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the study is untouched


@pytest.mark.drill  # SIGINT to a more-search subprocess, then --resume
def test_ctrl_c_exits_130_and_resume_trains_the_interrupted_plan(files, tmp_path):
    out = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "nas.cli.search"] + _args(files, out, **{"--trial-steps": "3000"})
    p = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # SIGINT once the first trial is training
        time.sleep(0.3)
        if (out / "study.journal").exists() and any(
                t.state == TrialState.RUNNING and "plan_hash" in t.user_attrs for t in _study(out).trials):
            break
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and "Loading weights" not in line]
    assert lines == ["interrupted; run the same command with --resume to continue"], stderr
    trials = _study(out).trials
    cut = trials[0]
    assert cut.state == TrialState.FAIL
    queued = [t for t in trials if t.state == TrialState.WAITING and t.user_attrs.get("interrupted") == 0]
    assert len(queued) == 1 and queued[0].user_attrs["plan_seed"] == 0

    assert search_main(_args(files, out, **{"--trials": "2"}) + ["--resume"]) == 0
    rerun = [t for t in _study(out).trials if t.user_attrs.get("interrupted") == 0]
    assert [t.state for t in rerun] == [TrialState.COMPLETE]
    assert rerun[0].params == cut.params and rerun[0].user_attrs["plan_hash"] == cut.user_attrs["plan_hash"]


def test_a_search_that_fails_before_a_trial_finishes_leaves_nothing(files, tmp_path, monkeypatch, capsys):
    import nas.train as trainer
    from nas.errors import UserError

    def broken(*a, **k):
        raise UserError("the trainer refused")

    monkeypatch.setattr(trainer, "train", broken)
    monkeypatch.chdir(tmp_path)
    assert search_main(_args(files, tmp_path / "new" / "out")) == 2
    assert "the trainer refused" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    shutil.rmtree(tmp_path / "new", ignore_errors=True)
