"""``more-search`` itself as several workers on one study: a real PostgreSQL server (tests/postgres.py)
and a shared journal.  This is what the README's "Scaling a search out" section says to run.

Workers share a tiny BERT and a few-step trial; heartbeats are 1 s so a dead worker is noticed fast.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.factories import finish, task_folder

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = task_folder(tmp_path_factory.mktemp("pgsearch"), 96, 16)
    return d


def more_search(files, out, storage, study, trials, steps, *extra):
    """One worker: ``more-search --storage STORAGE --study STUDY -o OUT`` (the repo's code)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "nas.cli.search", "--model", str(files / "model"),
           "--train-file", str(files / "train.tsv"), "--validation-file", str(files / "dev.tsv"),
           "--strategy", "trials", "--budget", "3k", "--max-length", "24", "--batch-size", "8", "-q",
           "--pruner", "none",
           "--storage", storage, "--study", study, "--heartbeat", "1", "-o", str(out),
           "--trials", str(trials), "--trial-steps", str(steps), *extra]
    return subprocess.Popen(cmd, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)




def load(storage, study):
    from nas.search.study import open_storage

    return optuna.load_study(study_name=study, storage=open_storage(storage, "unused")).get_trials(deepcopy=False)


def wait_for_running(storage, study, pid, timeout=120):
    """The number of the trial worker ``pid`` is training (its plan is built, training started)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            for t in load(storage, study):
                if t.state == TrialState.RUNNING and t.user_attrs.get("worker", {}).get("pid") == pid \
                        and "plan_hash" in t.user_attrs:
                    return t.number
        except (KeyError, ValueError):  # the study does not exist yet
            pass
        time.sleep(0.3)
    pytest.fail(f"worker {pid} never started a trial")


@pytest.mark.postgres
def test_two_workers_finish_n_trials_none_lost_or_repeated(files, postgres_url, tmp_path):
    study, n = f"s-{uuid.uuid4().hex[:8]}", 6
    # trust auth ignores the password; the second worker's URL carries one
    urls = [postgres_url, postgres_url.replace("postgres@", "postgres:s3cret@")]
    workers = [more_search(files, tmp_path / f"w{i}", urls[i], study, n, 4) for i in range(2)]
    for w in workers:
        finish(w)
    ts = load(postgres_url, study)
    states = [t.state for t in ts]
    assert states.count(TrialState.COMPLETE) >= n
    assert not {TrialState.RUNNING, TrialState.WAITING} & set(states)  # none lost
    trained = [t for t in ts if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len({json.dumps(t.params, sort_keys=True) for t in trained}) == len(trained)  # none run twice
    assert len({t.user_attrs["worker"]["pid"] for t in ts}) == 2  # both worked
    plans = [json.loads((tmp_path / f"w{i}" / "plan.json").read_text()) for i in range(2)]
    assert plans[0]["provenance"]["trial"] == plans[1]["provenance"]["trial"]  # one answer
    # plans and reports are shared: the storage shows without its password
    shown = postgres_url.replace("postgres@", "postgres:***@")
    assert plans[1]["provenance"]["storage"] == shown
    for f in ("plan.json", "report.md"):
        assert "s3cret" not in (tmp_path / "w1" / f).read_text()


@pytest.mark.postgres
@pytest.mark.drill  # kill -9 of a more-search worker subprocess mid-trial
def test_killed_worker_trial_retried_once_with_the_same_plan(files, postgres_url, tmp_path):
    study = f"s-{uuid.uuid4().hex[:8]}"
    victim = more_search(files, tmp_path / "a", postgres_url, study, 1, 3000)
    dead = wait_for_running(postgres_url, study, victim.pid)
    time.sleep(1.5)  # past its first heartbeat
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    finish(more_search(files, tmp_path / "b", postgres_url, study, 2, 4))
    ts = load(postgres_url, study)
    assert ts[dead].state == TrialState.FAIL
    retries = [t for t in ts if t.system_attrs.get("failed_trial") == dead]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == ts[dead].params
    assert retries[0].user_attrs["plan_hash"] == ts[dead].user_attrs["plan_hash"]  # the same plan
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.drill
@pytest.mark.parametrize("kind", ["postgres", "journal"])
def test_resume_on_a_shared_study_never_fails_a_live_workers_trial(files, tmp_path, request, kind):
    url = request.getfixturevalue("postgres_url") if kind == "postgres" else f"journal:{tmp_path / 'shared.journal'}"
    study = f"s-{uuid.uuid4().hex[:8]}"
    # The live worker's trial is far longer than the test.  Once the resumed worker has finished
    # its own trial, the live one must still be running, untouched; then the live worker is killed,
    # so the resumed one's wait for other workers (drain) ends at once instead of after a minute.
    live = more_search(files, tmp_path / "a", url, study, 1, 10**6)
    try:
        running = wait_for_running(url, study, live.pid)
        resumed = more_search(files, tmp_path / "b", url, study, 1, 4, "--resume")
        deadline = time.time() + 120
        while not [t for t in load(url, study) if t.state == TrialState.COMPLETE
                   and t.user_attrs.get("worker", {}).get("pid") == resumed.pid]:
            assert time.time() < deadline and resumed.poll() is None, "the resumed worker finished no trial"
            time.sleep(0.2)
        ts = load(url, study)
        assert live.poll() is None, "the live worker exited before the resumed one finished its trial"
        assert ts[running].state == TrialState.RUNNING  # the live worker's trial was left to it
    finally:
        live.kill()
        live.wait()
    finish(resumed)
