"""more-search end to end on a tiny model: flags reach SearchConfig, the files are written, the
plan trains with more-train; bad flags and values end with exit code 2."""
from __future__ import annotations

import json

import pytest
import torch

from nas import Plan
from nas.cli.search import build_parser, main
from nas.cli.train import main as train_main
from nas.search import SearchConfig

torch.set_num_threads(1)


@pytest.fixture
def library_bars():
    """-q turns the libraries' bars off for the process; the other tests get them back."""
    import datasets
    from transformers.utils import logging as hf_logging

    yield
    hf_logging.enable_progress_bar()
    datasets.enable_progress_bars()


def test_search_cli_writes_the_plan_and_report(tiny_bert, sentiment, tmp_path, capsys, library_bars):
    out = tmp_path / "plan.json"  # a .json output: the plan there, the search folder beside it
    rc = main(["--model", str(tiny_bert), "--train-file", str(sentiment[0]), "--budget", "3k",
               "--trials", "2", "--trial-steps", "2", "--max-length", "24", "--batch-size", "8",
               "--lr", "2e-3", "--pruner", "none", "--sampler", "random", "-o", str(out), "-q"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "Loading weights" not in cap.err + cap.out  # -q: the libraries' bars too
    plan = Plan.load(out)
    assert 0 < plan.trainable_params <= 3000 and plan.budget["spec"] == "3k"
    assert plan.task["train_file"] == str(sentiment[0])
    search_dir = tmp_path / "plan.search"
    for f in ("plan.json", "report.md", "pareto.png", "allocation.png", "study.journal"):
        assert (search_dir / f).is_file(), f
    assert f"more-train --plan {out}" in cap.out
    # the plan it wrote trains
    rc = train_main(["--plan", str(out), "--validation-file", str(sentiment[1]), "--max-steps", "2",
                     "--output-dir", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2


def test_flags_come_from_the_config_fields():
    args = build_parser().parse_args([])
    defaults = SearchConfig()
    for name in ("budget", "space", "n_trials", "trial_steps", "holdout", "batch_size", "max_length",
                 "first_trial_lr", "epochs", "pruner", "sampler", "allocation", "output_dir"):
        assert getattr(args, name) == getattr(defaults, name), name
    # several spellings of one field
    assert build_parser().parse_args(["--lr", "0.01"]).first_trial_lr == 0.01
    assert build_parser().parse_args(["--first-trial-lr", "0.02"]).first_trial_lr == 0.02
    assert build_parser().parse_args(["-o", "x"]).output_dir == "x"


@pytest.mark.parametrize("argv, message", [
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--pruner", "bogus"], "invalid choice: 'bogus'"),
    (["--trials", "many"], "invalid int value: 'many'"),
    (["--strategy", "guess"], "invalid choice: 'guess'"),
    (["--lr-grid", "1e-3,fast"], "invalid float_list value"),
])
def test_bad_flags_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_values_are_one_clear_line(tmp_path, capsys):
    assert main(["--holdout", "2", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --holdout") and "Traceback" not in err
    assert main(["--time-budget", "soon", "-o", str(tmp_path / "o")]) == 2
    assert "--time-budget 'soon'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written
    assert main(["--cost-budget", "0", "-o", str(tmp_path / "o")]) == 2
    assert "--cost-budget 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_weight_sharing_flags():
    args = build_parser().parse_args(["--strategy", "trials", "--lr-grid", "5e-4,2e-3", "--cost-budget", "0.3"])
    assert (args.strategy, args.lr_grid, args.cost_budget) == ("trials", (5e-4, 2e-3), 0.3)
    assert build_parser().parse_args([]).strategy == "supernet"
