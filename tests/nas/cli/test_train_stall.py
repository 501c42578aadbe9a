"""more-train's stall flags: --on_stall stop ends a stalled run with exit status 3 and its outputs,
a stall is named on stderr and in the JSON summary, and the flags come from TrainConfig's fields."""
from __future__ import annotations

import json

import pytest
import torch

from nas.train import TrainConfig
from nas.train.stall import STOPPED_EXIT
from tests.factories import lora_plan

torch.set_num_threads(1)


def _run(args, capsys):
    from nas.cli.train import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr()


def _stalling(tiny_bert, layout, sentiment, tmp_path):
    """A run that stalls: at lr 1e-6 the held-out loss does not move."""
    p = tmp_path / "plan.json"
    lora_plan(tiny_bert, layout, training={"epochs": 2, "batch_size": 16}).save(p)
    return ["--plan", p, "--train-file", sentiment[0], "--validation-file", sentiment[1], "--lr", "1e-6",
            "--max-length", "32", "--no-progress"]


def test_on_stall_stop_exits_3_with_the_stall_recorded(tiny_bert, layout, sentiment, tmp_path, capsys):
    out = tmp_path / "out"
    args = _stalling(tiny_bert, layout, sentiment, tmp_path) + ["--output_dir", out, "--on_stall", "stop"]
    code, cap = _run(args, capsys)
    assert code == STOPPED_EXIT == 3, cap.err
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["stall"]["action"] == "stop"  # the check: a third of 12 steps
    assert "stalled: training had not taken off at step 4 (held-out loss" in cap.err and "--learning_rate, e.g. 5e-07" in cap.err
    results = json.loads((out / "results.json").read_text())
    assert results["stall"] == summary["stall"] and (out / "adapters.safetensors").is_file()
    assert results["history"][-1]["step"] == 4  # its metrics are those of the adapters saved


def test_by_default_a_stall_is_named_and_the_run_finishes(tiny_bert, layout, sentiment, tmp_path, capsys):
    code, cap = _run(_stalling(tiny_bert, layout, sentiment, tmp_path) + ["--output_dir", tmp_path / "out"], capsys)
    assert code == 0, cap.err
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["steps"] == 12 and summary["stall"]["action"] == "warn"
    assert "stalled: training had not taken off at step 4 (held-out loss" in cap.err and "--on_stall restart" in cap.err
    assert "training has stalled" in (tmp_path / "out" / "train.log").read_text()


def test_the_stall_flags_come_from_the_config_fields(capsys):
    import dataclasses

    from nas.cli.train import build_parser

    p = build_parser()
    a = p.parse_args(["--plan", "p", "--on_stall", "restart", "--stall-restarts", "1", "--stall_lr_factor", "0.25"])
    assert (a.on_stall, a.stall_restarts, a.stall_lr_factor) == ("restart", 1, 0.25)
    assert p.parse_args(["--plan", "p"]).on_stall is None  # not given: the plan's hint, then the default
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert fields["stall_restarts"].default == 2 and fields["stall_lr_factor"].default == 0.5
    assert "exit status 3" in " ".join(p.format_help().split())
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--plan", "p", "--on_stall", "never"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_bad_stall_settings_are_user_errors(tiny_bert, layout, tmp_path, capsys):
    p = tmp_path / "plan.json"
    lora_plan(tiny_bert, layout).save(p)
    code, cap = _run(["--plan", p, "--stall_lr_factor", "1.5"], capsys)
    assert code == 2 and "stall_lr_factor" in cap.err
