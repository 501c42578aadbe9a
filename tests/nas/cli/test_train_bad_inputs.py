"""more-train's bad inputs: exit code 2, one line naming the problem and the fix, no
traceback, nothing written and nothing of the user's deleted; and the output-folder rules (a
unique default folder, no reuse of a folder holding a run without --resume/--overwrite_output_dir)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.factories import lora_plan, write_sentiment

torch.set_num_threads(1)
FAST = ["--max_steps", "2", "--max-train-samples", "32", "--no-progress", "--device", "cpu"]


def _cli(args, capsys):
    from nas.cli.train import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr()


def snapshot(d: Path) -> dict[str, str]:
    """Every file under ``d`` (and every folder) with its content hash."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def finished(tiny_bert, layout, sentiment, tmp_path_factory):
    """A finished run (adapters, checkpoints, results) to copy into each test's folder."""
    from nas.cli.train import main

    d = tmp_path_factory.mktemp("finished")
    lora_plan(tiny_bert, layout).save(d / "plan.json")
    data = ["--train-file", str(sentiment[0]), "--validation-file", str(sentiment[1])]
    assert main(["--plan", str(d / "plan.json"), *data, *FAST, "--save_steps", "1", "--eval_steps", "1",
                 "--output_dir", str(d / "run")]) == 0
    return d, data


@pytest.fixture
def work(finished, tmp_path, monkeypatch):
    """tmp_path holding plan.json, the finished run in outb/, and a file afile; cwd = tmp_path."""
    d, data = finished
    shutil.copy(d / "plan.json", tmp_path / "plan.json")
    shutil.copytree(d / "run", tmp_path / "outb")
    (tmp_path / "afile").write_text("not a folder\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path, data


def _edit_plan(path: Path, **changes):
    plan = json.loads(path.read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            plan.setdefault(section, {})[name] = value
        else:
            plan[section] = value
    path.write_text(json.dumps(plan))


def _non_utf8(tmp):
    write_sentiment(tmp / "bad.tsv", 40, seed=3)
    (tmp / "bad.tsv").write_bytes((tmp / "bad.tsv").read_bytes() + b"caf\xe9 au lait\t1\n")  # Latin-1


def _bad_labels(tmp):
    write_sentiment(tmp / "bad.tsv", 40, seed=3, label=lambda s: len(s) % 4)  # 4 classes for a 2-label head


def _unknown_module(tmp):
    plan = json.loads((tmp / "plan.json").read_text())
    plan["modules"]["bert.encoder.layer.0.nonexistent"] = {"type": "lora", "rank": 4, "alpha": 8.0}
    (tmp / "plan.json").write_text(json.dumps(plan))


# (id, extra flags, set-up of the folder, words the message must hold)
CASES = [
    ("device gpu", ["--device", "gpu", "--output_dir", "o"], None, ["'gpu'", "cpu"]),
    ("proxy nonsense", ["--allocation", "dynamic", "--proxy", "nonsense", "--output_dir", "o"], None,
     ["nonsense", "--proxy"]),
    ("output_dir is a file", ["--output_dir", "afile"], None, ["is a file", "--output_dir"]),
    ("output_dir under a file", ["--output_dir", "afile/run"], None, ["is a file", "--output_dir"]),
    ("weight_decay -1", ["--weight_decay", "-1", "--output_dir", "o"], None, ["weight_decay", ">= 0"]),
    ("plan lr is a string", ["--output_dir", "o"],
     lambda t: _edit_plan(t / "plan.json", training__lr="fast"), ["training.lr", "'fast'"]),
    ("plan modules is a number", ["--output_dir", "o"],
     lambda t: _edit_plan(t / "plan.json", schema_version=999, modules=3), ["plan.json", "invalid"]),
    ("non-UTF-8 train file", ["--train-file", "bad.tsv", "--output_dir", "o"], _non_utf8, ["bad.tsv"]),
    ("labels the head cannot hold", ["--train-file", "bad.tsv", "--num_labels", "2", "--output_dir", "o"],
     _bad_labels, ["label"]),
    ("rerun into a finished run", ["--output_dir", "outb"], None, ["holds a run", "--resume",
                                                                 "--overwrite_output_dir"]),
    ("unknown module over a finished run", ["--output_dir", "outb", "--overwrite_output_dir"],
     _unknown_module, ["nonexistent"]),
    ("--resume with nothing to resume", ["--output_dir", "o", "--resume"], None, ["nothing to resume"]),
    ("--resume into a plain folder", ["--output_dir", "afolder", "--resume"],
     lambda t: (t / "afolder").mkdir(), ["nothing to resume"]),
    ("--resume without --output_dir", ["--resume"], None, ["--output_dir"]),
    ("--resume and --overwrite_output_dir", ["--output_dir", "outb", "--resume", "--overwrite_output_dir"],
     None, ["contradict"]),
]
if torch.cuda.is_available():
    CASES = [c for c in CASES if c[0] != "device gpu"]
else:
    CASES.append(("device cuda without CUDA", ["--device", "cuda", "--output_dir", "o"], None,
                  ["no CUDA", "--device cpu"]))


@pytest.mark.parametrize("name,flags,prepare,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exit_2_nothing_written_nothing_lost(work, capsys, name, flags, prepare, words):
    tmp, data = work
    if prepare is not None:
        prepare(tmp)
    before = snapshot(tmp)
    if "--train-file" in flags:  # the case's own train file instead of the good one
        data = data[2:]
    fast = FAST[:-2] if "--device" in flags else FAST
    code, cap = _cli(["--plan", "plan.json", *data, *fast, *flags], capsys)
    assert code == 2, cap.err
    errors = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in cap.err and len(errors) == 1, cap.err
    assert all(w in cap.err for w in words), cap.err  # (a PlanError lists its problems below)
    assert snapshot(tmp) == before  # nothing written, nothing deleted
    assert not Path("runs").exists()


def test_default_output_folder_is_new_for_each_run(work, capsys):
    tmp, data = work
    outs = []
    for _ in range(2):
        code, cap = _cli(["--plan", "plan.json", *data, *FAST], capsys)
        assert code == 0, cap.err
        outs.append(Path(json.loads(cap.out.strip().splitlines()[-1])["output_dir"]))
    assert outs[0] != outs[1] and all(o.parent == Path("runs") and o.name.startswith("plan-") for o in outs)
    assert all((o / "adapters.safetensors").is_file() for o in outs)  # the second replaced nothing


def test_overwrite_output_dir_replaces_the_run(work, capsys):
    tmp, data = work
    code, cap = _cli(["--plan", "plan.json", *data, *FAST, "--seed", "3", "--output_dir", "outb",
                      "--overwrite_output_dir"], capsys)
    assert code == 0, cap.err
    assert json.loads((tmp / "outb" / "train_config.json").read_text())["seed"] == 3
    # the earlier run saved checkpoint-1 and -2; this one saves at its end only
    assert sorted(p.name for p in (tmp / "outb").glob("checkpoint-*")) == ["checkpoint-2"]


def test_over_budget_plan_warns(work, capsys):
    tmp, data = work
    _edit_plan(tmp / "plan.json", budget={"spec": "0.001%", "params": 10})
    code, cap = _cli(["--plan", "plan.json", *data, *FAST, "--output_dir", "o"], capsys)
    assert code == 0, cap.err
    warning = [line for line in cap.err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "over its own budget of 10" in warning[0]
    assert "over its own budget" in (tmp / "o" / "train.log").read_text()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir(work, capsys):
    tmp, data = work
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o555)
    try:
        code, cap = _cli(["--plan", "plan.json", *data, *FAST, "--output_dir", "ro/run"], capsys)
    finally:
        (tmp / "ro").chmod(0o755)
    assert code == 2 and "not writable" in cap.err
    assert not (tmp / "ro" / "run").exists()
