"""On a CUDA GPU (skipped elsewhere): fp16/bf16 training, gradient checkpointing and save/load."""
from __future__ import annotations

import math

import pytest
import torch

from nas import load_adapted, trainable_state_dict
from nas.models import load_model
from nas.train import train
from tests.factories import cfg_for, mixed_plan

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("gc", [False, True])
def test_cuda_training_every_kind_and_shortcut(tiny_bert, layout, sentiment, tmp_path, precision, gc):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    plan = mixed_plan(tiny_bert, layout)
    model = load_model(str(tiny_bert), num_labels=2)
    res = train(plan, cfg_for(sentiment, device="cuda", max_steps=4, eval_every=2, gradient_checkpointing=gc,
                              bf16=precision == "bf16", fp16=precision == "fp16", output_dir=str(tmp_path)),
                model=model)
    assert math.isfinite(res.metrics["loss"]) and res.peak_memory_kind == "cuda_allocated"
    assert res.peak_memory_bytes > 0 and next(model.parameters()).is_cuda
    model.eval()
    ids = torch.randint(5, 30, (2, 7), device="cuda")
    with torch.no_grad():
        want = model(input_ids=ids).logits
        again = load_adapted(tmp_path, load_model(str(tiny_bert), num_labels=2).cuda())
        torch.testing.assert_close(again(input_ids=ids).logits, want)
    assert set(trainable_state_dict(again)) == set(trainable_state_dict(model))


def test_cuda_device_index_out_of_range(tiny_bert, layout, sentiment):
    from nas import UserError

    with pytest.raises(UserError, match="CUDA device"):
        train(mixed_plan(tiny_bert, layout), cfg_for(sentiment, device=f"cuda:{torch.cuda.device_count()}"))
