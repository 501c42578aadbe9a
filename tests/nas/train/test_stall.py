"""The stall check (nas/train/stall.py): the rule on synthetic evaluations, the start (untrained
model and labels' prior), and on the tiny BERT: a stalled run is named in train.log and
results.json, a healthy one records ``stall: null``, a restart is exactly a fresh run at the lower
rate, ``--resume`` continues the restarted attempt, and the search's in-memory runs get no check.

Tiny task: 512 sentiment rows (the label: a positive word occurs), 3 epochs of 32 steps, LoRA r4 on
every projection, evaluated every 20 steps.  At lr 2e-2 (and 2.5e-2) it has left the start by the
check (step 32 of 96); at 5e-2 it sits at the majority class all run, a stall from too high a rate."""
from __future__ import annotations

import json
import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nas.train import TrainConfig, prepare, train
from nas.train.callbacks import RESUME_STATE
from nas.train.stall import (ACCURACY_MARGIN, CORRELATION_FLOOR, LOSS_MARGIN, StallCheck, check_step,
                             constant_loss, judge, majority_rate, stall_mode)
from tests.factories import cfg_for, lora_plan, write_sentiment

torch.set_num_threads(1)

HEALTHY_LR, STALLING_LR = 2e-2, 5e-2
ROLES = ("q", "k", "v", "o", "ffn_up", "ffn_down")


# ---- the rule --------------------------------------------------------------------------------------
START = 0.693  # ln 2: a balanced binary task


def test_healthy_run_is_not_stalled():
    v = judge(0.45, START, "classification", {"accuracy": 0.82}, majority=0.51)
    assert not v.stalled and not v.by_loss and not v.by_metric


def test_stalled_by_loss_although_accuracy_moved():
    v = judge(START * (1 - LOSS_MARGIN / 2), START, "classification", {"accuracy": 0.60}, majority=0.51)
    assert v.stalled and v.by_loss and not v.by_metric


def test_stalled_at_the_majority_class_although_the_loss_fell():
    # MRPC's way to stall: the loss learns the class frequencies, every row gets the majority class.
    v = judge(0.58, 0.624, "classification", {"accuracy": 0.684, "f1": 0.812}, majority=0.684)
    assert v.stalled and v.by_metric and not v.by_loss
    assert (v.metric_name, v.metric, v.chance) == ("accuracy", 0.684, 0.684)
    assert judge(0.58, 0.624, "classification", {"accuracy": 0.684 + ACCURACY_MARGIN / 2}, 0.684).stalled


def test_regression_at_zero_correlation_is_stalled():
    var = 2.3  # the labels' variance: predicting the training mean
    v = judge(var * 0.99, var, "regression", {"pearson": 0.02, "spearman": 0.03})
    assert v.stalled and v.by_loss and v.by_metric and v.metric_name == "pearson" and v.chance == 0.0
    below_zero = judge(var * 0.9, var, "regression", {"pearson": -0.1, "spearman": -0.1})
    assert below_zero.stalled and below_zero.by_metric and not below_zero.by_loss
    assert not judge(var * 0.8, var, "regression", {"pearson": CORRELATION_FLOOR + 0.1}).stalled


def test_slow_but_not_stalled():
    # A few percent below the start and a few points above the majority: learning, only slowly.
    v = judge(START * (1 - 2 * LOSS_MARGIN), START, "classification", {"accuracy": 0.56}, majority=0.51)
    assert not v.stalled


def test_nan_loss_and_causal_lm():
    assert judge(float("nan"), START, "classification", {"accuracy": 0.9}, majority=0.5).stalled
    lm = judge(3.0, 3.5, "causal_lm", {"token_accuracy": 0.2, "perplexity": 20.0})
    assert not lm.stalled and lm.metric_name is None  # no chance level: the loss alone decides
    assert judge(3.49, 3.5, "causal_lm", {"token_accuracy": 0.2}).stalled


def test_check_step_is_a_third_of_the_run():
    assert [check_step(n) for n in (1, 10, 96, 690)] == [1, 3, 32, 230]


# ---- the start -------------------------------------------------------------------------------------
def _labels_data(train_labels, eval_labels, task_type="classification"):
    from datasets import Dataset

    return SimpleNamespace(task_type=task_type, train=Dataset.from_dict({"labels": train_labels}),
                           eval=Dataset.from_dict({"labels": eval_labels}))


def test_prior_loss_and_majority_rate():
    data = _labels_data([1, 1, 1, 0], [1, 0])  # training frequencies 3/4, 1/4
    assert constant_loss(data, data.eval) == pytest.approx(-(np.log(0.75) + np.log(0.25)) / 2)
    assert majority_rate(data, data.eval) == 0.5  # any constant class: right on half the held-out rows
    skewed = _labels_data([1, 1, 1, 0], [0, 0, 0, 1])
    assert majority_rate(skewed, skewed.eval) == 0.75  # the best constant, not the training majority
    reg = _labels_data([1.0, 2.0, 3.0], [0.0, 4.0], "regression")
    assert constant_loss(reg, reg.eval) == pytest.approx(4.0) and majority_rate(reg, reg.eval) is None


# ---- the callback on synthetic evaluations ---------------------------------------------------------
class _Control(SimpleNamespace):
    should_training_stop = False
    should_evaluate = False
    should_save = True


def test_constant_loss_is_the_labels_prior_on_held_out_rows():
    import math
    from types import SimpleNamespace

    from datasets import Dataset

    train = Dataset.from_dict({"labels": [0, 0, 0, 1]})  # prior 3/4, 1/4
    rows = Dataset.from_dict({"labels": [0, 1]})
    cls = SimpleNamespace(task_type="classification", train=train)
    assert math.isclose(constant_loss(cls, rows), -(math.log(0.75) + math.log(0.25)) / 2)
    reg = SimpleNamespace(task_type="regression", train=Dataset.from_dict({"labels": [1.0, 3.0]}))
    assert math.isclose(constant_loss(reg, Dataset.from_dict({"labels": [2.0, 4.0]})), (0 + 4) / 2)
    assert constant_loss(SimpleNamespace(task_type="causal_lm", train=train), rows) is None


def _drive(mode, losses, *, restarts_left=2):
    """A StallCheck over scheduled evaluations every 10 steps of a 60-step run (check at 20)."""
    history = []
    tr = SimpleNamespace(data=SimpleNamespace(task_type="classification"), history=history)
    check = StallCheck(tr, mode, logging.getLogger("test.stall"), restarts_left, next_lr=1e-3)
    check.start = {"start_loss": START, "untrained_loss": START, "prior_loss": 0.7, "majority": 0.5,
                   "check_step": 20}
    state, control = SimpleNamespace(max_steps=60, global_step=0), _Control()
    check.on_train_begin(None, state, control)
    for i, loss in enumerate(losses):
        state.global_step = 10 * (i + 1)
        history.append({"step": state.global_step, "loss": loss, "accuracy": 0.5 if loss > 0.68 else 0.8})
        check.on_evaluate(None, state, control)
        if control.should_training_stop:
            break
    return check, control


def test_warn_names_the_first_stall_once_and_records_the_recovery(caplog):
    with caplog.at_level(logging.INFO, logger="test.stall"):
        check, control = _drive("warn", [0.69, 0.69, 0.69, 0.69, 0.5, 0.69])
    # step 10 is before the check; stalled at 20 and 30; healthy at 50, after which nothing is judged
    assert check.stall["step"] == 20 and check.stall["action"] == "warn" and check.stall["recovered_step"] == 50
    assert check.healthy_step == 50 and not control.should_training_stop
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "step 20: training has stalled" in warnings[0].getMessage()
    assert "--learning_rate, e.g. 0.001" in warnings[0].getMessage()


def test_stop_and_restart_act_at_the_first_stall():
    check, control = _drive("stop", [0.69] * 10)
    assert control.should_training_stop and check.stall["step"] == 20 and check.stall["action"] == "stop"
    check, control = _drive("restart", [0.69] * 10)
    assert control.should_training_stop and check.restart and not control.should_save  # no checkpoint of it
    check, control = _drive("restart", [0.69] * 10, restarts_left=0)
    assert not control.should_training_stop and check.stall["action"] == "continue"


def test_a_healthy_check_ends_the_watch():
    check, _ = _drive("restart", [0.69, 0.5, 0.69, 0.69])
    assert check.stall is None and check.healthy_step == 20


# ---- end to end on the tiny BERT -------------------------------------------------------------------
@pytest.fixture(scope="module")
def task(tmp_path_factory):
    d = tmp_path_factory.mktemp("stall_task")
    return write_sentiment(d / "train.tsv", 512, seed=1), write_sentiment(d / "dev.tsv", 64, seed=2)


@pytest.fixture(scope="module")
def plan(tiny_bert, layout):
    return lora_plan(tiny_bert, layout, roles=ROLES)


def _cfg(task, out, lr, **kw):
    return cfg_for(task, lr=lr, epochs=3, output_dir=str(out), **{"eval_every": 20, **kw})


def _tensors(out):
    return load_file(str(out / "adapters.safetensors"))


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def fresh_at_half(plan, task, tmp_path_factory):
    """A plain run at half the stalling rate: what a restart must give."""
    out = tmp_path_factory.mktemp("fresh") / "run"
    return train(plan, _cfg(task, out, STALLING_LR / 2)), out


def test_a_healthy_run_records_no_stall_and_keeps_its_history(plan, task, tmp_path):
    out = tmp_path / "run"
    res = train(plan, _cfg(task, out, HEALTHY_LR))
    assert res.stall is None
    sc = res.stall_check
    assert sc["mode"] == "warn" and sc["check_step"] == 32 and sc["healthy_step"] == 32
    assert sc["start_loss"] == min(sc["untrained_loss"], sc["prior_loss"])
    assert [a["learning_rate"] for a in sc["attempts"]] == [HEALTHY_LR]
    # The check evaluation (step 32) is not one of the run's: history and metrics.jsonl keep the schedule.
    assert [h["step"] for h in res.history] == [20, 40, 60, 80, 96]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [20, 40, 60, 80, 96]
    saved = json.loads((out / "results.json").read_text())
    assert saved["stall"] is None and saved["stall_check"]["healthy_step"] == 32
    assert "step 32: training has left the start" in (out / "train.log").read_text()


def test_a_stalled_run_is_named_in_the_log_and_results(plan, task, tmp_path):
    out = tmp_path / "run"
    res = train(plan, _cfg(task, out, STALLING_LR))
    stall = json.loads((out / "results.json").read_text())["stall"]
    assert stall == res.stall and stall["step"] == 32 and stall["action"] == "warn"
    assert stall["heldout_loss"] >= stall["start_loss"] * (1 - LOSS_MARGIN) or stall["by_metric"]
    assert stall["metric_name"] == "accuracy" and stall["chance"] == pytest.approx(38 / 64)  # dev's majority
    assert "--learning_rate, e.g. 0.025" in stall["suggestion"] and "--on_stall restart" in stall["suggestion"]
    assert res.steps == 96 and [h["step"] for h in res.history] == [20, 40, 60, 80, 96]  # warn goes on
    log = (out / "train.log").read_text()
    line = next(x for x in log.splitlines() if "training has stalled" in x)
    assert "step 32" in line and "start" in line and "at chance" in line and "e.g. 0.025" in line


def test_the_check_does_not_change_the_run(plan, task, tmp_path, fresh_at_half):
    # The extra evaluations use no random numbers and touch no weights: off gives the same tensors.
    res = train(plan, _cfg(task, tmp_path / "off", STALLING_LR / 2, on_stall="off"))
    assert res.stall_check is None and res.stall is None
    assert _same(_tensors(tmp_path / "off"), _tensors(fresh_at_half[1]))


def test_a_restart_is_a_fresh_run_at_the_lower_rate(plan, task, tmp_path, tiny_bert, fresh_at_half):
    from nas.models import load_model

    out = tmp_path / "run"
    torch.manual_seed(0)  # the head a fresh run draws (seed 0)
    model = load_model(str(tiny_bert), num_labels=2)  # a caller's model: put back in place for the restart
    res = train(plan, _cfg(task, out, STALLING_LR, on_stall="restart"), model=model)
    attempts = res.stall_check["attempts"]
    assert [a["learning_rate"] for a in attempts] == [STALLING_LR, STALLING_LR / 2]
    assert attempts[0]["stall"]["step"] == attempts[0]["steps"] == 32 and attempts[0]["stall"]["action"] == "restart"
    assert attempts[1]["stall"] is None and res.stall is None and res.steps == 96
    assert json.loads((out / "train_config.json").read_text())["learning_rate"] == STALLING_LR / 2
    assert "attempt 2: learning rate 0.025 (attempt 1 stalled at step 32)" in (out / "train.log").read_text()
    fresh, fresh_out = fresh_at_half
    assert _same(_tensors(out), _tensors(fresh_out)) and res.metrics == fresh.metrics
    # the model was trained in place, with one set of adapters
    assert torch.equal(model.classifier.weight.detach(), _tensors(out)["classifier.weight"])


def test_restarts_halve_the_rate_until_none_are_left(tiny_bert, layout, sentiment, tmp_path):
    # At 1e-6 nothing moves, whatever the rate is halved to: every attempt stalls.
    res = train(lora_plan(tiny_bert, layout), cfg_for(sentiment, lr=1e-6, epochs=1, output_dir=str(tmp_path / "run"),
                                                      on_stall="restart", stall_restarts=2))
    attempts = res.stall_check["attempts"]
    assert [a["learning_rate"] for a in attempts] == [1e-6, 5e-7, 2.5e-7]
    assert [a["stall"]["action"] for a in attempts] == ["restart", "restart", "continue"]
    assert [a["steps"] for a in attempts] == [2, 2, 6] and res.stall["action"] == "continue"
    assert "no restarts left" in (tmp_path / "run" / "train.log").read_text()


def test_resume_continues_the_restarted_attempt(plan, task, tmp_path, fresh_at_half):
    from transformers import TrainerCallback

    from nas.train.trainer import Interrupted

    class CtrlC(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if args.learning_rate < STALLING_LR and state.global_step == 12:
                raise KeyboardInterrupt

    out = tmp_path / "run"
    cfg = _cfg(task, out, STALLING_LR, on_stall="restart", eval_every=8)  # checkpoints before the check too
    with pytest.raises(Interrupted, match="--resume"):
        train(plan, cfg, callbacks=[CtrlC()])
    kept = sorted(out.glob("checkpoint-*"))
    assert kept, "the restarted attempt's checkpoints are kept"
    # every checkpoint left is the restarted attempt's: the stalled one's are gone
    assert {torch.load(p / RESUME_STATE, weights_only=False)["config"]["learning_rate"] for p in kept} \
        == {STALLING_LR / 2}
    res = train(plan, _cfg(task, out, STALLING_LR, on_stall="restart", eval_every=8, resume=True))
    assert [a["learning_rate"] for a in res.stall_check["attempts"]] == [STALLING_LR, STALLING_LR / 2]
    assert res.steps == 96 and res.stall is None
    assert _same(_tensors(out), _tensors(fresh_at_half[1]))


def test_the_search_runs_get_no_check(plan, task, tiny_bert):
    from nas.search.finalists import trial_config

    search = SimpleNamespace(batch_size=16, max_length=32, group_by_length=False, device=None, bf16=False,
                             fp16=False)
    assert stall_mode(trial_config(search, plan, steps=10, lr=1e-3, seed=0)) == "off"
    assert stall_mode(TrainConfig(output_dir=None)) == "off" and stall_mode(TrainConfig(output_dir="x")) == "warn"
    res = train(plan, cfg_for(task, lr=HEALTHY_LR, max_steps=4))  # in memory, as the trials strategy's
    assert res.stall_check is None and res.stall is None
    trainer = prepare(plan, cfg_for(task, lr=HEALTHY_LR, output_dir=None))  # the finalists' and benchmarks' way
    shutil.rmtree(trainer.scratch_dir)
    assert not any(isinstance(c, StallCheck) for c in trainer.callback_handler.callbacks)
