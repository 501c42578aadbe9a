"""The default search (--strategy supernet) on several workers: the same ``more-search`` command with
the same --storage and -o, started twice.  One trains the super-network, the scoring and the
finalists are split between them through the shared study, and they return the plan one worker
finds alone, each finalist trained once.  A worker killed with kill -9 in the finalists has its
trial retried by the other; a --resume after every worker died reuses the super-network and every
finished trial.  A journal and a real PostgreSQL server (tests/postgres.py); a tiny BERT."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas import Plan
from tests.factories import finish, task_folder

REPO = Path(__file__).resolve().parents[3]
# Enough finalists for two workers (7 at the first rung, 7 at the second) and sampled plans in two
# scoring rounds; heartbeats of 1 s, so a dead worker is noticed fast.
SEARCH = ["-q", "--budget", "3k", "--max-length", "24", "--batch-size", "8", "--n-finalists", "3",
          "--cost-budget", "2.5", "--scoring-share", "0.5", "--heartbeat", "1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return task_folder(tmp_path_factory.mktemp("workers"), 600, 32)


def worker(files, out: Path, storage: str, *extra: str, pause: str | None = None) -> subprocess.Popen:
    """``more-search`` as a worker of ``storage`` writing to ``out`` (one thread: repeatable losses)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("MORE_NAS_TEST_PAUSE", None)
    if pause:
        env["MORE_NAS_TEST_PAUSE"] = pause
    cmd = [sys.executable, "-m", "nas.cli.search", "--model", str(files / "model"),
           "--train-file", str(files / "train.tsv"), "--validation-file", str(files / "dev.tsv"),
           *SEARCH, "--storage", storage, "-o", str(out), *extra]
    return subprocess.Popen(cmd, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def studies(storage: str, study: str = "more-search") -> dict[str, list]:
    from nas.search.study import open_storage

    st = open_storage(storage, "unused")
    return {s.removeprefix(study).lstrip(".") or "finalists": optuna.load_study(study_name=s, storage=st).trials
            for s in optuna.get_all_study_names(st) if s.startswith(study)}


def plan_key(out: Path):
    plan = Plan.load(out / "plan.json")
    return plan.modules, plan.shortcuts, plan.training["lr"]


def trained(ts) -> Counter:
    """(finalist, rung) -> its finished trials."""
    return Counter((t.user_attrs["cid"], t.user_attrs["rung"]) for t in ts
                   if t.state == TrialState.COMPLETE and "rung" in t.user_attrs)


def draws(ts) -> dict:
    return {t.user_attrs["job"]: t.params for t in ts if t.state == TrialState.COMPLETE}


@pytest.fixture(scope="module")
def alone(files, tmp_path_factory):
    """One worker on its own: the plan, the finalists and the scoring draws to compare with."""
    d = tmp_path_factory.mktemp("alone")
    storage = f"journal:{d / 'study.journal'}"
    finish(worker(files, d / "out", storage))
    return plan_key(d / "out"), studies(storage)


def check_split(got: dict, alone, out: Path) -> set:
    """The two-worker study against the lone worker's; returns the finalists' workers."""
    plan, ref = alone
    assert plan_key(out) == plan
    for trials in got.values():
        assert not {t.state for t in trials} & {TrialState.RUNNING, TrialState.WAITING}  # none lost
    fins = trained(got["finalists"])
    assert set(fins.values()) == {1} and fins == trained(ref["finalists"])  # each trained once, the same ones
    assert draws(got["scoring"]) == draws(ref["scoring"])  # the same sampled plans, whoever scored them
    stages = Counter(t.user_attrs["job"].split()[0] for t in got["stages"] if t.state == TrialState.COMPLETE)
    assert stages == {"supernet": 1, "report": 1}  # trained once, one plan and report written
    return {t.user_attrs["worker"]["pid"] for t in got["finalists"] if t.state == TrialState.COMPLETE}


def test_two_workers_share_the_default_search_on_a_journal(files, alone, tmp_path):
    storage = f"journal:{tmp_path / 'study.journal'}"
    ws = [worker(files, tmp_path / "out", storage) for _ in range(2)]
    for w in ws:
        assert "plan: " in finish(w)
    assert check_split(studies(storage), alone, tmp_path / "out") == {w.pid for w in ws}  # both trained some


@pytest.mark.postgres
def test_two_workers_share_the_default_search_on_postgres(files, alone, postgres_url, tmp_path):
    study = f"s-{uuid.uuid4().hex[:8]}"
    ws = [worker(files, tmp_path / "out", postgres_url, "--study", study) for _ in range(2)]
    for w in ws:
        finish(w)
    assert check_split(studies(postgres_url, study), alone, tmp_path / "out") == {w.pid for w in ws}


def _paused(p: subprocess.Popen, out: Path, stage: str = "finalist", timeout: float = 240) -> None:
    marker, deadline = out / f".paused-{stage}", time.time() + timeout
    while not marker.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), f"never reached {stage}: {p.poll()}"
    marker.unlink()


def _kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL


@pytest.mark.drill
def test_a_worker_killed_in_the_finalists_has_its_trial_retried_by_the_other(files, alone, tmp_path):
    storage, out = f"journal:{tmp_path / 'study.journal'}", tmp_path / "out"
    victim = worker(files, out, storage, pause="finalist:2")  # its first finalist done, the second RUNNING
    _paused(victim, out)
    survivor = worker(files, out, storage)
    deadline = time.time() + 120  # killed once the survivor trains finalists beside it
    while not any(t.user_attrs.get("worker", {}).get("pid") == survivor.pid and "rung" in t.user_attrs
                  for t in studies(storage)["finalists"]) and time.time() < deadline:
        time.sleep(0.2)
    _kill(victim)
    finish(survivor)
    got = studies(storage)
    check_split(got, alone, out)
    [killed] = [t for t in got["finalists"] if t.state == TrialState.FAIL]
    assert killed.user_attrs["worker"]["pid"] == victim.pid
    [retry] = [t for t in got["finalists"] if t.state == TrialState.COMPLETE
               and t.user_attrs["job"] == killed.user_attrs["job"]]
    assert retry.system_attrs.get("failed_trial") == killed.number  # Optuna's retry of that very trial
    assert retry.user_attrs["worker"]["pid"] == survivor.pid


@pytest.mark.drill
def test_a_resume_after_every_worker_died_keeps_the_super_network_and_finished_trials(files, alone, tmp_path):
    storage, out = f"journal:{tmp_path / 'study.journal'}", tmp_path / "out"
    victim = worker(files, out, storage, pause="finalist:3")
    _paused(victim, out)
    _kill(victim)  # the only worker: all are dead
    before = studies(storage)
    done = {(k, t.number): t.value for k, ts in before.items() for t in ts if t.state == TrialState.COMPLETE}
    assert len(trained(before["finalists"])) == 2
    stamp = (out / "supernet.safetensors").stat().st_mtime_ns
    ws = [worker(files, out, storage, "--resume") for _ in range(2)]
    for w in ws:
        finish(w)
    after = studies(storage)
    assert {(k, t.number): t.value for k, ts in after.items() for t in ts if (k, t.number) in done} == done
    assert (out / "supernet.safetensors").stat().st_mtime_ns == stamp  # not trained again
    check_split(after, alone, out)
