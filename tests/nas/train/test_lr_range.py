"""The learning-rate range test: on a quadratic, where gradient descent lowers the loss fastest at
lr = 1/curvature and diverges above 2/curvature, it suggests a rate within 3x of the best and
never one at or above where it diverged; on a tiny BERT through nas.train, the caller's model is
untouched and the plot is written."""
from __future__ import annotations

import math

import pytest
import torch

from nas.train import TrainConfig, lr_range_test, plot_range_test
from nas.train.lr_range import suggest, sweep
from tests.factories import cfg_for, lora_plan


def quadratic(a: float, noise: float = 0.0, seed: int = 0):
    """One gradient-descent step on 0.5 * a * |w|^2 per call: its loss before the step."""
    g = torch.Generator().manual_seed(seed)
    w = torch.ones(8, dtype=torch.float64)

    def step(lr: float) -> float:
        nonlocal w
        loss = 0.5 * a * float(w @ w) * (1 + noise * float(torch.randn(1, generator=g)))
        w = w - lr * a * w
        return loss
    return step


@pytest.mark.parametrize("a", [1.0, 10.0, 100.0])
@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_suggests_the_rate_where_the_loss_falls_fastest(a, noise):
    rt = sweep(quadratic(a, noise), lo=1e-5, hi=1e3 / a, steps=100)
    assert rt.suggestion is not None and rt.method.startswith("steepest")
    assert 1 / (3 * a) <= rt.suggestion <= 3 / a, rt.suggestion * a  # the best: 1/a
    assert rt.diverged_at is not None and rt.diverged_at > 2 / a  # it ran past the edge, then stopped
    assert rt.suggestion < rt.diverged_at and max(rt.lrs) < rt.diverged_at
    assert len(rt.lrs) == len(rt.losses) == len(rt.smoothed) < 100


def test_a_diverging_rate_is_never_suggested():
    for a in (1.0, 30.0, 1000.0):
        for hi in (10.0, 1e3):
            rt = sweep(quadratic(a, 0.3), lo=1e-6, hi=hi, steps=60)
            if rt.diverged_at is not None:
                assert rt.suggestion is None or rt.suggestion < rt.diverged_at
            assert rt.suggestion is None or rt.suggestion < 2 / a  # below the unstable edge


def test_non_finite_loss_stops_and_a_flat_curve_suggests_nothing():
    calls = []

    def step(lr):
        calls.append(lr)
        return math.nan if lr > 1e-2 else 1.0
    rt = sweep(step, lo=1e-4, hi=1.0, steps=20)
    assert rt.diverged_at == calls[-1] > 1e-2 and len(rt.lrs) == len(calls) - 1
    assert rt.suggestion is None and rt.method.startswith("flat")
    assert suggest([1e-3, 1e-2], [1.0, 0.5]) == (None, "too few steps")
    summary = rt.summary(points=5)
    assert len(summary["lrs"]) == len(summary["smoothed"]) == 5 and summary["diverged_at"] == rt.diverged_at
    with pytest.raises(ValueError):
        sweep(step, lo=1.0, hi=0.1)


def test_range_test_on_a_tiny_bert_leaves_the_callers_model_untouched(tiny_bert, layout, sentiment, tmp_path):
    from nas.models import load_model

    torch.manual_seed(0)
    model = load_model(str(tiny_bert), num_labels=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = lora_plan(tiny_bert, layout, rank=2)
    cfg = cfg_for(sentiment)
    assert isinstance(cfg, TrainConfig)
    rt = lr_range_test(plan, cfg, model=model, lo=1e-4, hi=10.0, steps=40)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert not any("lora" in k for k in after)  # no adapter was injected into the caller's model
    assert 2 < len(rt.lrs) <= 40 and rt.lrs == sorted(rt.lrs) and rt.lrs[0] == pytest.approx(1e-4)
    assert all(math.isfinite(x) for x in rt.losses)
    if rt.diverged_at is not None:  # at 10 it usually does
        assert rt.suggestion is None or rt.suggestion < rt.diverged_at
    again = lr_range_test(plan, cfg, model=model, lo=1e-4, hi=10.0, steps=40)
    assert again.losses == rt.losses  # from the same fresh init, the same batches
    png = plot_range_test(rt, tmp_path / "lr_range.png")
    first = png.read_bytes()
    assert first[:4] == b"\x89PNG" and plot_range_test(rt, tmp_path / "b.png").read_bytes() == first
