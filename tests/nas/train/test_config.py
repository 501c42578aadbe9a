"""TrainConfig: TrainingArguments names, older spellings as aliases (kwargs, attributes, plan, CLI)."""
from __future__ import annotations

import dataclasses

import pytest

from nas import Plan
from nas.train import TrainConfig
from nas.train.config import ALIASES


def test_old_names_are_aliases_everywhere():
    cfg = TrainConfig(lr=1e-3, batch_size=8, epochs=2, scheduler="cosine", eval_every=5)
    assert (cfg.learning_rate, cfg.per_device_train_batch_size, cfg.num_train_epochs) == (1e-3, 8, 2)
    assert cfg.lr_scheduler_type == "cosine" and cfg.eval_steps == 5
    cfg.lr = 2e-3
    assert cfg.learning_rate == 2e-3 and "lr" not in cfg.to_dict()
    with pytest.raises(TypeError, match="alias"):
        TrainConfig(lr=1e-3, learning_rate=2e-3)
    with pytest.raises(TypeError):
        TrainConfig.from_plan(None, no_such_setting=1)


def test_a_plan_training_section_written_today_still_loads():
    plan = Plan(model={}, modules={}, task={"name": "mrpc", "max_seq_length": 64},
                training={"lr": 3e-4, "epochs": 4, "batch_size": 32, "warmup": 0.1, "lr_scheduler": "constant"})
    cfg = TrainConfig.from_plan(plan, per_device_train_batch_size=None)  # None: not given
    assert (cfg.learning_rate, cfg.num_train_epochs, cfg.per_device_train_batch_size) == (3e-4, 4, 32)
    assert (cfg.warmup_ratio, cfg.lr_scheduler_type, cfg.task, cfg.max_length) == (0.1, "constant", "mrpc", 64)
    assert TrainConfig.from_plan(plan, batch_size=8).per_device_train_batch_size == 8


def test_every_field_has_help_and_the_cli_takes_both_spellings():
    from nas.cli.train import build_parser

    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))
    assert {"lr", "batch_size", "epochs", "eval_every", "scheduler", "save_every"} <= set(ALIASES)
    p = build_parser()
    new = p.parse_args(["--plan", "p", "--learning_rate", "1e-3", "--per_device_train_batch_size", "8",
                        "--gradient_accumulation_steps", "2", "--bf16", "--num_train_epochs", "2"])
    old = p.parse_args(["--plan", "p", "--lr", "1e-3", "--batch-size", "8", "--gradient-accumulation-steps",
                        "2", "--bf16", "--epochs", "2"])
    assert vars(new) == vars(old)
    assert new.learning_rate == 1e-3 and new.per_device_train_batch_size == 8 and new.bf16 is True
    assert p.parse_args(["--plan", "p"]).bf16 is None  # not given: the plan's hint or the default
    # a plan's hint can turn a switch on, so each switch can also be turned off
    assert p.parse_args(["--plan", "p", "--no-group_by_length"]).group_by_length is False
    assert p.parse_args(["--plan", "p", "--group-by-length"]).group_by_length is True


def test_the_training_subset_a_plan_was_searched_on_is_the_one_it_trains(tmp_path):
    """A search on --max-train-samples counts its cost against a training on that subset; the plan
    records it (with the seed that drew it), and more-train's defaults train the same rows."""
    from nas.data.spec import TaskSpec
    from nas.models import load_tokenizer

    spec = TaskSpec(task="sst2-sample", max_train_samples=40, data_seed=3)
    section = spec.plan_section(spec.load(load_tokenizer(None)))
    assert (section["max_train_samples"], section["data_seed"]) == (40, 3) and "max_eval_samples" not in section
    plan = Plan(model={}, modules={}, task=section)
    cfg = TrainConfig.from_plan(plan)
    assert (cfg.max_train_samples, cfg.data_seed) == (40, 3)
    assert TrainConfig.from_plan(plan, max_train_samples=20).max_train_samples == 20  # a flag still overrides
    whole = TaskSpec(task="sst2-sample")
    assert not {"max_train_samples", "data_seed"} & set(whole.plan_section(whole.load(load_tokenizer(None))))
