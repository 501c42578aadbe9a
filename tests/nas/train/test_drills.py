"""Crash drills for more-train: kill -9 mid-epoch and during a checkpoint write, Ctrl-C.  After
each, every checkpoint-N is whole (the old or the new one, never torn) and --resume ends with the
same adapters and metrics as an uninterrupted run at the same seed.  The killed CLI runs in a
subprocess on a tiny saved model (the reference and the resume in this process); the test hooks
MORE_TRAIN_TEST_STEP_PAUSE and MORE_TRAIN_TEST_SAVE_PAUSE make the signal land where the drill says."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nas.cli.train import main as train_main
from nas.train.callbacks import RESUME_STATE
from nas.train.outdir import SAVE_PAUSE_ENV, checkpoints, last_complete_checkpoint
from nas.train.trainer import STEP_PAUSE_ENV
from tests.factories import lora_plan

pytestmark = pytest.mark.drill
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def setup(tiny_bert, layout, sentiment, tmp_path_factory):
    d = tmp_path_factory.mktemp("drill")
    lora_plan(tiny_bert, layout).save(d / "plan.json")
    args = ["--plan", str(d / "plan.json"), "--train-file", str(sentiment[0]), "--validation-file",
            str(sentiment[1]), "--max_steps", "8", "--save_steps", "2", "--eval_steps", "2",
            "--no-progress", "--device", "cpu"]
    ref = d / "reference"
    assert train_main(args + ["--output_dir", str(ref)]) == 0  # in-process: no second start-up cost
    return args, ref


def cli(args, out, *extra, **hooks) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", **hooks}
    return subprocess.Popen([sys.executable, "-m", "nas.cli.train", *args, "--output_dir", str(out), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, p: subprocess.Popen, timeout=60.0):
    t0 = time.monotonic()
    while not path.exists():
        assert p.poll() is None, f"the run ended before {path} appeared: {p.stderr.read()}"
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


def assert_whole(out: Path):
    """Every checkpoint-N holds its resume state and loadable tensors: none is torn."""
    from safetensors.torch import load_file

    for c in checkpoints(out):
        assert (c / RESUME_STATE).is_file() and (c / "trainer_state.json").is_file(), c
        load_file(str(c / "adapters.safetensors"))


def assert_same_result(out: Path, ref: Path):
    from safetensors.torch import load_file

    a, b = load_file(str(ref / "adapters.safetensors")), load_file(str(out / "adapters.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
    assert json.loads((out / "results.json").read_text())["metrics"] == \
        json.loads((ref / "results.json").read_text())["metrics"]


def resume(args, out, ref):
    assert train_main(args + ["--output_dir", str(out), "--resume"]) == 0
    assert not list(out.glob(".tmp-*"))  # the torn write was set aside
    assert_same_result(out, ref)


def test_kill9_mid_epoch(setup, tmp_path):
    args, ref = setup
    out = tmp_path / "run"
    p = cli(args, out, **{STEP_PAUSE_ENV: "0.3"})
    wait_for(out / "checkpoint-2" / RESUME_STATE, p)
    time.sleep(0.45)  # inside step 3 or 4 of a 6-step epoch
    p.kill()
    p.wait(30)
    assert_whole(out)
    assert last_complete_checkpoint(out).name == "checkpoint-2"
    assert not (out / "results.json").exists()
    resume(args, out, ref)


def test_kill9_during_checkpoint_write(setup, tmp_path):
    args, ref = setup
    out = tmp_path / "run"
    p = cli(args, out, **{SAVE_PAUSE_ENV: "60@4"})
    wait_for(out / ".tmp-checkpoint-4" / "checkpoint-4" / RESUME_STATE, p)  # written, not yet in place
    p.kill()
    p.wait(30)
    assert [c.name for c in checkpoints(out)] == ["checkpoint-2"]  # the old one, whole; no torn new one
    assert_whole(out)
    resume(args, out, ref)


def test_sigint_keeps_the_checkpoint_and_resume_continues(setup, tmp_path):
    args, ref = setup
    out = tmp_path / "run"
    p = cli(args, out, **{STEP_PAUSE_ENV: "0.3"})
    wait_for(out / "checkpoint-2" / RESUME_STATE, p)
    time.sleep(0.45)
    p.send_signal(signal.SIGINT)
    assert p.wait(30) == 130
    err = p.stderr.read()
    assert "Traceback" not in err
    said = [line for line in err.splitlines() if "interrupt" in line]
    assert len(said) == 1 and "--resume" in said[0] and "checkpoint-2" in said[0], err
    assert_whole(out)
    assert (out / "train.log").is_file() and (out / "train_config.json").is_file()
    resume(args, out, ref)


def test_sigint_before_any_checkpoint_leaves_nothing(setup, tmp_path):
    args, _ = setup
    out = tmp_path / "run"
    p = cli(args, out, **{STEP_PAUSE_ENV: "5"})
    wait_for(out / "train.log", p)  # training has started
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    assert p.wait(30) == 130
    err = p.stderr.read()
    assert "Traceback" not in err and "nothing was kept" in err, err
    assert not out.exists()  # the folder this command made is gone with it
