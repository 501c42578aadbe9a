"""Several search workers on one PostgreSQL study (a real server; see tests/postgres.py).

The objective is trivial so the tests take seconds; the storage is set up as the engine sets it
up.  Round two points these at ``more-search`` itself.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import optuna
import pytest

from tests.factories import finish
from optuna.trial import TrialState

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[3]


def new_study(url: str) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    # Created here, once: two workers creating the tables at the same moment can collide.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.create_study(study_name=name, storage=url, direction="maximize")
    return name


def worker(url: str, study: str, n: int, seconds: float, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.nas.search.pg_worker", url, study, str(n), str(seconds), *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)




def trials(url: str, study: str):
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def test_two_workers_finish_n_trials_none_lost_or_repeated(postgres_url, tmp_path):
    n = 8
    study = new_study(postgres_url)
    go = tmp_path / "go"
    workers = [worker(postgres_url, study, n, 0.3, "--go", str(go)) for _ in range(2)]
    for w in workers:
        assert w.stdout.readline().strip() == "ready", w.stderr.read()
    go.touch()
    for w in workers:
        finish(w)
    ts = trials(postgres_url, study)
    states = [t.state for t in ts]
    # Each worker stops once the study holds n complete trials; one may have been mid-trial.
    assert n <= states.count(TrialState.COMPLETE) <= n + 1
    assert set(states) == {TrialState.COMPLETE}, states
    assert sorted(t.number for t in ts) == list(range(len(ts)))
    assert len({t.params["x"] for t in ts}) == len(ts), "two trials drew the same parameters"
    assert len({t.user_attrs["worker"] for t in ts}) == 2, "one worker ran every trial"


# (1 trial of 2 s): the survivor is in its last trial when the other dies and finishes it before
# the dead trial's heartbeat goes stale; (4 trials of 1 s): it has trials left to notice it in.
@pytest.mark.drill  # kill -9 of a study worker subprocess mid-trial
@pytest.mark.parametrize("n, seconds", [(1, 2.0), (4, 1.0)], ids=["survivor-in-last-trial", "survivor-has-more"])
def test_killed_worker_trial_is_failed_and_retried_once_with_the_same_plan(postgres_url, tmp_path, n, seconds):
    study = new_study(postgres_url)
    go = tmp_path / "go"
    victim = worker(postgres_url, study, 1, 600, "--heartbeat", "1", "--go", str(go))
    survivor = worker(postgres_url, study, n, seconds, "--heartbeat", "1", "--drain", "--go", str(go))
    for w in (victim, survivor):
        assert w.stdout.readline().strip() == "ready", w.stderr.read()
    go.touch()
    line = victim.stdout.readline()
    assert line.startswith("started"), victim.stderr.read()
    time.sleep(1.5)  # past the first heartbeat: a trial that never beat is never found stale
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    dead = int(line.split()[1])
    finish(survivor)

    ts = trials(postgres_url, study)
    assert ts[dead].state == TrialState.FAIL
    retries = [t for t in ts if t.system_attrs.get("failed_trial") == dead]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == ts[dead].params
    assert retry.user_attrs["plan_seed"] == ts[dead].user_attrs["plan_seed"] == dead
    assert retry.user_attrs["worker"] != ts[dead].user_attrs["worker"]
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
