"""Gradient accumulation and gradient checkpointing give the plain run's numbers."""
from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from nas import Plan, apply_plan, discover, trainable_state_dict
from nas.models import load_model
from nas.train import train
from tests.conftest import make_tiny_model, tiny_batch
from tests.factories import cfg_for, mixed_plan, no_dropout

torch.set_num_threads(1)


def _run(tiny_bert, layout, sentiment, **kw):
    torch.manual_seed(0)  # the same task head in every run
    model = no_dropout(load_model(str(tiny_bert), num_labels=2))
    train(mixed_plan(tiny_bert, layout), cfg_for(sentiment, max_steps=3, eval_every=3, **kw), model=model)
    return {k: v.detach().clone() for k, v in trainable_state_dict(model).items()}


def _first_gradient(tiny_bert, layout, sentiment, **kw):
    """The (clipped) gradient the optimizer receives at step 1."""
    torch.manual_seed(0)  # the same task head in every run
    model = no_dropout(load_model(str(tiny_bert), num_labels=2))
    grads = {}

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **_):
            if not grads:
                grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters()
                              if p.grad is not None})

    train(mixed_plan(tiny_bert, layout), cfg_for(sentiment, max_steps=1, eval_every=1, **kw), model=model,
          callbacks=[Grab()])
    return grads


def test_accumulation_2x8_equals_one_batch_of_16(tiny_bert, layout, sentiment):
    one = _first_gradient(tiny_bert, layout, sentiment, batch_size=16)
    acc = _first_gradient(tiny_bert, layout, sentiment, batch_size=8, gradient_accumulation_steps=2)
    half = _first_gradient(tiny_bert, layout, sentiment, batch_size=8)  # the first 8 rows only
    assert one.keys() == acc.keys() and len(one) > 20
    scale = max(g.abs().max() for g in one.values())
    # rows are padded per micro-batch, so the sums differ only by float rounding
    for k in one:
        torch.testing.assert_close(acc[k], one[k], rtol=1e-4, atol=1e-5 * scale)
    assert any(not torch.allclose(half[k], one[k], rtol=1e-4, atol=1e-5 * scale) for k in one)


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("kind", ["s_res1", "s_res2", "s_in", "s_cut"])
def test_gradient_checkpointing_with_every_shortcut(family, kind):
    """Same loss and gradients with and without HF gradient checkpointing (before the fix,
    s_res1/s_in/s_cut raised torch's CheckpointError: their captured inputs were gone when
    the backward recomputed the layer)."""
    grads = []
    for gc in (False, True):
        model = make_tiny_model(family)
        lay = discover(model)
        modules = {m.name: {"type": "lora", "rank": 2} for m in lay.modules[:2]}
        apply_plan(model, Plan(model={}, modules=modules, shortcuts={f"1.{kind}": {"rank": 2}}), lay)
        for p in model.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.1)  # B non-zero: every path carries gradient
        if gc:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        batch = {**tiny_batch(), "labels": torch.tensor([0, 1, 0])}
        loss = model(**batch).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                      if p.requires_grad}))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l1, l0)
    assert g0.keys() == g1.keys() and any("more_shortcuts" in n for n in g0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-6, msg=n)
        if "more_shortcuts" in n:
            assert g0[n].abs().sum() > 0, n


def test_gradient_checkpointing_training_equals_plain(tiny_bert, layout, sentiment):
    plain = _run(tiny_bert, layout, sentiment)
    gc = _run(tiny_bert, layout, sentiment, gradient_checkpointing=True)
    for k in plain:
        torch.testing.assert_close(gc[k], plain[k], rtol=1e-4, atol=1e-5, msg=k)
