"""more-train end to end on tiny models: it trains and writes its files; user mistakes give one
clear line and exit code 2."""
from __future__ import annotations

import json

import torch

from nas import Plan
from tests.factories import lora_plan, write_sentiment

# Tiny models: one intra-op thread is much faster than two on a shared, busy machine.
torch.set_num_threads(1)


# ---- CLI -----------------------------------------------------------------------------------------
def _cli(args, capsys):
    from nas.cli.train import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr()


def _plan_file(tmp_path, plan: Plan):
    p = tmp_path / "plan.json"
    plan.save(p)
    return p


def test_cli_trains(tiny_bert, layout, sentiment, tmp_path, capsys):
    p = _plan_file(tmp_path, lora_plan(tiny_bert, layout, training={"epochs": 1, "batch_size": 32}))
    code, cap = _cli(["--plan", p, "--train-file", sentiment[0], "--validation-file", sentiment[1],
                      "--output-dir", tmp_path / "out", "--lr", "0.005", "--max-length", "32"], capsys)
    assert code == 0, cap.err
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["main_metric"] == "accuracy"
    assert (tmp_path / "out" / "adapters.safetensors").is_file()


def test_cli_merge_reports_what_was_not_folded(tiny_bert, layout, sentiment, tmp_path, capsys):
    plan = lora_plan(tiny_bert, layout, training={"epochs": 1, "batch_size": 48},
                     shortcuts={"0.s_res1": {"rank": 2}})
    p = _plan_file(tmp_path, plan)
    code, cap = _cli(["--plan", p, "--train-file", sentiment[0], "--validation-file", sentiment[1],
                      "--output-dir", tmp_path / "out", "--merge", "--no-progress", "--max-length", "32",
                      "--allocation", "static"], capsys)
    assert code == 0, cap.err
    assert "not foldable" in cap.err and "shortcut 0.s_res1" in cap.err
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["merge_report"]["merged"] and summary["peft_dir"] is None


def test_cli_missing_column(tiny_bert, layout, sentiment, tmp_path, capsys):
    p = _plan_file(tmp_path, lora_plan(tiny_bert, layout))
    code, cap = _cli(["--plan", p, "--train-file", sentiment[0], "--validation-file", sentiment[1],
                      "--text-columns", "review", "--output-dir", tmp_path / "o"], capsys)
    assert code == 2
    assert "review" in cap.err and "available columns: ['sentence', 'label']" in cap.err
    assert "Traceback" not in cap.err and len(cap.err.strip().splitlines()) == 1
    code, cap = _cli(["--plan", p, "--train-file", sentiment[0], "--label-column", "stars",
                      "--output-dir", tmp_path / "o"], capsys)
    assert code == 2 and "stars" in cap.err and "available columns" in cap.err


def test_cli_labels_do_not_fit_the_head(tiny_bert, layout, tmp_path, capsys):
    tr = write_sentiment(tmp_path / "tr.tsv", 20, label=lambda s: len(s.split()) % 4)  # labels 0..3
    p = _plan_file(tmp_path, lora_plan(tiny_bert, layout, task={"num_labels": 2}))
    code, cap = _cli(["--plan", p, "--train-file", tr, "--output-dir", tmp_path / "o"], capsys)
    assert code == 2 and "do not fit a classification head with 2 labels" in cap.err
    assert "Traceback" not in cap.err


def test_cli_plan_for_another_model(tiny_bert, sentiment, tmp_path, capsys):
    plan = Plan(model={"name_or_path": str(tiny_bert)},
                modules={"model.layers.0.self_attn.q_proj": {"type": "lora", "rank": 4}})
    p = _plan_file(tmp_path, plan)
    code, cap = _cli(["--plan", p, "--train-file", sentiment[0], "--output-dir", tmp_path / "o"], capsys)
    assert code == 2
    assert "model.layers.0.self_attn.q_proj" in cap.err and "not an adaptable module" in cap.err
    assert "Traceback" not in cap.err


def test_cli_corrupt_plan(tmp_path, capsys):
    p = tmp_path / "plan.json"
    p.write_text('{"schema_version": 1, "model": {"name_or_path": "x"}, "modules": {')
    code, cap = _cli(["--plan", p], capsys)
    assert code == 2 and "not valid JSON" in cap.err and "Traceback" not in cap.err
    code, cap = _cli(["--plan", tmp_path / "missing.json"], capsys)
    assert code == 2 and "does not exist" in cap.err


def test_cli_bad_flag_values(tiny_bert, layout, tmp_path, capsys):
    p = _plan_file(tmp_path, lora_plan(tiny_bert, layout))
    code, cap = _cli(["--plan", p, "--epochs", "-1"], capsys)
    assert code == 2 and "epochs" in cap.err
    code, cap = _cli(["--plan", p, "--batch-size", "0"], capsys)
    assert code == 2 and "batch_size" in cap.err
