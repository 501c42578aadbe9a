"""Crash drills on the search: ``kill -9`` of ``more-search`` in the proxy stage, mid-trial (or
mid-scoring), while the super-network's weights are written and while the plan and report are
written, for both strategies.  After each kill every file the search writes is the old or the new
one (never torn), the journal still holds every finished trial, and ``--resume`` gives the plan an
uninterrupted run at the same seed gives.  The kill points come from the MORE_NAS_TEST_PAUSE test
hook (nas.io.pause_for_test)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas import Plan
from nas.cli.search import main as search_main
from tests.factories import task_folder

pytestmark = pytest.mark.drill
ROOT = Path(__file__).resolve().parents[3]
COMMON = ["-q", "--budget", "3k", "--max-length", "24", "--batch-size", "8"]
STRATEGY = {
    "trials": ["--strategy", "trials", "--max-train-samples", "48", "--trials", "2", "--trial-steps", "2"],
    "supernet": ["--proxy", "fisher"],  # --proxy: the proxy stage runs on data this small too
}
JSONS = ("plan.json", "proxy_scores.json", "supernet.json")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return task_folder(tmp_path_factory.mktemp("drills"), 200, 32)


def _args(d: Path, out: Path, strategy: str) -> list[str]:
    return COMMON + STRATEGY[strategy] + ["--model", str(d / "model"), "--train-file", str(d / "train.tsv"),
                                         "--validation-file", str(d / "dev.tsv"), "-o", str(out)]


def _key(plan: Plan):
    return plan.modules, plan.shortcuts, plan.training["lr"]


@pytest.fixture(scope="module")
def clean(data, tmp_path_factory):
    """The plan of an uninterrupted run, per strategy (run once, when first asked for)."""
    plans = {}

    def get(strategy):
        if strategy not in plans:
            out = tmp_path_factory.mktemp(f"clean-{strategy}") / "out"
            assert search_main(_args(data, out, strategy)) == 0
            plans[strategy] = _key(Plan.load(out / "plan.json"))
        return plans[strategy]
    return get


def _finished(out: Path) -> dict[tuple[str, int], float]:
    """Every finished trial of every study in the journal (which must load)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not (out / "study.journal").exists():
        return {}
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    return {(s, t.number): t.value for s in optuna.get_all_study_names(storage)
            for t in optuna.load_study(study_name=s, storage=storage).trials if t.state == TrialState.COMPLETE}


def _kill_at(stage: str, args: list[str], out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
           "MORE_NAS_TEST_PAUSE": stage}
    p = subprocess.Popen([sys.executable, "-m", "nas.cli.search", *args], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker = out / f".paused-{stage.removesuffix(':2')}"
    deadline = time.time() + 120
    while not marker.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists(), f"never reached {stage}: {p.poll()}\n{p.stderr.read() if p.poll() is not None else ''}"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    p.stderr.close()
    assert p.returncode == -signal.SIGKILL
    marker.unlink()


def _untorn(out: Path, ref) -> None:
    """Each file is absent or complete; plan.json, when there, is the finished plan."""
    for name in JSONS:
        if (out / name).exists():
            json.loads((out / name).read_text())
    if (out / "plan.json").exists():
        assert _key(Plan.load(out / "plan.json")) == ref
    if (out / "report.md").exists():
        assert (out / "plan.json").exists() and "## " in (out / "report.md").read_text()
    if (out / "supernet.safetensors").exists():
        from safetensors.torch import load_file

        assert load_file(str(out / "supernet.safetensors"))


# (strategy, where it is killed, what must be absent after the kill, what must be there)
DRILLS = [
    ("trials", "proxy", ["proxy_scores.json", "plan.json"], []),
    ("trials", "trial:2", ["plan.json"], ["proxy_scores.json"]),  # the second trial, the first finished
    ("trials", "write:plan.json", ["plan.json", "report.md"], []),
    ("supernet", "proxy", ["proxy_scores.json", "supernet.json"], []),
    ("supernet", "write:supernet.safetensors", ["supernet.safetensors", "supernet.json"], ["proxy_scores.json"]),
    ("supernet", "scoring:2", ["plan.json"], ["supernet.json", "supernet.safetensors"]),
    ("supernet", "write:report.md", ["report.md"], ["plan.json"]),
]


@pytest.mark.parametrize("strategy, stage, absent, present", DRILLS, ids=[f"{s}-{k}" for s, k, *_ in DRILLS])
def test_kill_9_then_resume_gives_the_uninterrupted_plan(data, clean, tmp_path, strategy, stage, absent, present):
    ref = clean(strategy)
    out = tmp_path / "out"
    args = _args(data, out, strategy)
    _kill_at(stage, args, out)
    assert [n for n in absent if (out / n).exists()] == []
    assert [n for n in present if not (out / n).exists()] == []
    _untorn(out, ref)
    finished = _finished(out)
    if stage.endswith(":2"):
        assert finished, "the trial before the killed one finished"

    if not (out / "study.journal").exists():  # killed before the study began: nothing to resume,
        assert search_main(args + ["--resume"]) == 2  # --resume says so (exit 2) and
    else:  # the same command without --resume starts it again in that folder
        args = args + ["--resume"]
    for tmp in out.glob(".*.tmp"):  # a write killed before its rename, as found a while later
        os.utime(tmp, (time.time() - 3600,) * 2)
    assert search_main(args) == 0
    _untorn(out, ref)
    assert not list(out.glob(".*.tmp"))  # a write killed before its rename: its temporary file is gone
    assert _key(Plan.load(out / "plan.json")) == ref
    after = _finished(out)
    assert {k: after.get(k) for k in finished} == finished  # no finished trial lost
