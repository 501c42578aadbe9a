"""more-train under torchrun: 2 CPU processes (DDP over gloo) on a tiny saved BERT.

Two processes with 4 rows each train the adapters one process with 8 rows does (same seed,
same steps; the random sampler and --group_by_length both split each optimizer step's rows
among the ranks); rank 0 alone prints the summary and writes the run; a run stopped by SIGTERM
(a scheduler's preemption: torchrun passes it on to its workers, which die at once) continues
with --resume to the adapters of an uninterrupted 2-process run."""
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
from safetensors.torch import load_file

from nas.cli.train import main as train_main
from nas.train.callbacks import RESUME_STATE
from nas.train.outdir import last_complete_checkpoint
from nas.train.trainer import STEP_PAUSE_ENV
from tests.factories import bert_layout, lora_plan, make_tiny_bert, write_sentiment

pytestmark = pytest.mark.ci
ROOT = Path(__file__).resolve().parents[3]
# Everything a finished run writes here (a pure-LoRA plan: peft_adapter/; save_total_limit 2).
RUN_FILES = {"plan.json", "adapters.safetensors", "metrics.jsonl", "train.log", "results.json",
             "train_config.json", "peft_adapter"}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A tiny BERT with dropout (``drop``) and without (``nodrop``: one process's 8-row dropout
    mask is not two processes' 4-row ones), a q,v LoRA plan for each, 64 train rows (8 steps of
    8 per epoch: no partial batch, which DDP would pad) and 16 dev rows."""
    d = tmp_path_factory.mktemp("ddp")
    write_sentiment(d / "train.tsv", 64, seed=1)
    write_sentiment(d / "dev.tsv", 16, seed=2)
    for name in ("drop", "nodrop"):
        model = make_tiny_bert(d / name)
        if name == "nodrop":
            cfg = json.loads((model / "config.json").read_text())
            cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            (model / "config.json").write_text(json.dumps(cfg))
        lora_plan(model, bert_layout(model)).save(d / f"{name}.json")
    return d


def args(task, model: str, *extra) -> list[str]:
    return ["--plan", str(task / f"{model}.json"), "--train-file", str(task / "train.tsv"),
            "--validation-file", str(task / "dev.tsv"), "--learning_rate", "5e-3", "--seed", "3",
            "--device", "cpu", "--no-progress", *map(str, extra)]


def torchrun(argv: list[str], logs: Path, **env) -> subprocess.Popen:
    """``python -m torch.distributed.run --nproc_per_node 2 -m nas.cli.train ...``; each rank's
    stdout and stderr go to ``logs/<run id>/attempt_0/<rank>/``.  ``--standalone``: the launcher
    binds a free port itself (a port picked here could be taken before it binds it, as two of
    these run at once)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", **env}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--log-dir", str(logs), "--redirects", "3", "-m", "nas.cli.train", *argv]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rank_output(logs: Path) -> dict[int, tuple[str, str]]:
    """{rank: (stdout, stderr)} of a torchrun that logged to ``logs``."""
    return {int(r.name): ((r / "stdout.log").read_text(), (r / "stderr.log").read_text())
            for r in logs.glob("*/attempt_*/*") if r.name.isdigit()}


def finished(p: subprocess.Popen, logs: Path, timeout: float = 180) -> dict[int, tuple[str, str]]:
    """Wait for a torchrun; -> {rank: (stdout, stderr)}, failing with them unless it exited 0."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    ranks = rank_output(logs)
    assert p.returncode == 0, f"torchrun exited {p.returncode}:\n{out}\n{err}\n{ranks}"
    return ranks


def adapters(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapters.safetensors"))


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("sampling", ["random", "group_by_length"])
def test_two_processes_train_as_one_with_their_batch(task, tmp_path, sampling):
    extra = ["--max_steps", 10, "--eval_steps", 5] + (["--group_by_length"] if sampling != "random" else [])
    two, one = tmp_path / "two", tmp_path / "one"
    p = torchrun(args(task, "nodrop", *extra, "--per_device_train_batch_size", 4, "--output_dir", two),
                 tmp_path / "logs")
    # meanwhile, in this process: one process with the global batch
    assert train_main(args(task, "nodrop", *extra, "--per_device_train_batch_size", 8, "--output_dir", one)) == 0
    ranks = finished(p, tmp_path / "logs")

    # (a) the same adapters and the same evaluations (a step crosses into the second epoch)
    a, b = adapters(one), adapters(two)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, float((a[k] - b[k]).abs().max()))
    m1, m2 = metrics(one), metrics(two)
    assert [m["step"] for m in m2] == [m["step"] for m in m1] == [5, 10]
    for x, y in zip(m1, m2):  # train_loss too: rank 0 reports every rank's rows
        assert x.keys() == y.keys() and all(x[k] == pytest.approx(y[k], rel=1e-5) for k in x), (x, y)

    # (b) rank 0 printed the summary, once; rank 1 printed none of what rank 0 did
    (out0, err0), (out1, err1) = ranks[0], ranks[1]
    summary = json.loads(out0.strip().splitlines()[-1])
    assert summary["steps"] == 10 and summary["output_dir"] == str(two)
    assert out1 == "", out1
    said = [line for line in err0.splitlines() if line.strip()]
    assert any("outputs in" in line for line in said), err0
    assert not [line for line in said if line in err1], err1
    # ... and rank 0 alone wrote the run: nothing torn or doubled
    assert {p.name for p in two.iterdir()} == RUN_FILES | {"checkpoint-5", "checkpoint-10"}
    log = (two / "train.log").read_text()
    assert log.count("training: batch 4 x 1") == 1 and log.count("done: ") == 1, log
    assert json.loads((two / "results.json").read_text())["steps"] == 10
    ckpt = two / "checkpoint-10"
    assert (ckpt / RESUME_STATE).is_file()
    assert sorted(p.name for p in ckpt.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]


@pytest.mark.drill
def test_resume_under_torchrun(task, tmp_path):
    """With dropout on: each rank's RNG state must come back from the checkpoint."""
    argv = args(task, "drop", "--max_steps", 8, "--save_steps", 2, "--eval_steps", 2,
                "--per_device_train_batch_size", 4)
    ref, out = tmp_path / "ref", tmp_path / "run"
    # the uninterrupted reference runs beside the one to stop (that one sleeps in each step)
    first = torchrun(argv + ["--output_dir", ref], tmp_path / "logs-ref")
    p = torchrun(argv + ["--output_dir", out], tmp_path / "logs-cut", **{STEP_PAUSE_ENV: "0.5"})
    t0 = time.monotonic()
    while not (out / "checkpoint-2" / RESUME_STATE).exists():
        assert p.poll() is None, f"the run ended before its first checkpoint: {p.communicate()}"
        assert time.monotonic() - t0 < 120, "no checkpoint-2 after 120 s"
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    p.communicate(timeout=60)
    assert not (out / "results.json").exists(), "the run finished before it was stopped"
    kept = last_complete_checkpoint(out)
    assert kept is not None and kept.name != "checkpoint-8", (kept, rank_output(tmp_path / "logs-cut"))
    finished(first, tmp_path / "logs-ref")

    finished(torchrun(argv + ["--output_dir", out, "--resume"], tmp_path / "logs-resume"), tmp_path / "logs-resume")
    assert f"resuming from {kept}" in (out / "train.log").read_text()
    a, b = adapters(ref), adapters(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), (kept, {k: float((a[k] - b[k]).abs().max()) for k in a})
    assert metrics(out) == metrics(ref), kept
    assert not list(out.glob(".tmp-*"))
