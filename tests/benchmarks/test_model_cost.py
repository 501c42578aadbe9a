"""benchmarks/model_cost.py: each variant trains the method it names at the size it reports, and the
token count behind the rates is the training batches' real tokens (evaluation and padding left out)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import model_cost  # noqa: E402


@pytest.fixture(scope="module")
def data(tiny_bert, sentiment):
    from nas.data import load_task
    from nas.models import load_tokenizer

    return load_task(None, load_tokenizer(str(tiny_bert)), train_file=sentiment[0], validation_file=sentiment[1],
                     max_length=32)


def test_peft_rank_is_the_nearest_size(layout):
    per_rank = sum(m.d_in + m.d_out for m in layout.modules if m.role in ("q", "v"))
    assert model_cost.peft_rank(layout, 3 * per_rank + per_rank // 3) == 3
    assert model_cost.peft_rank(layout, 3 * per_rank - per_rank // 3) == 3
    assert model_cost.peft_rank(layout, per_rank // 2) == 1  # a tie goes to the lower rank; never 0


@pytest.mark.parametrize("variant", ["ours", "peft"])
def test_a_timed_run_counts_the_real_tokens_of_its_training_steps(tiny_bert, data, variant):
    tr, size, n_lin, tokens, label = model_cost.build(str(tiny_bert), variant, data, "5%", max_steps=3,
                                                      per_device_train_batch_size=8)
    trainable = sum(p.numel() for n, p in tr.model.named_parameters() if p.requires_grad and "classifier" not in n
                    and "pooler" not in n)
    assert trainable == size > 0
    assert ("PEFT" in label) == (variant == "peft")
    assert n_lin == 2 * (4 * 32 * 32 + 2 * 32 * 64)  # tiny BERT: 2 layers, hidden 32, MLP 64
    tr.train()
    assert len(tokens) == 3  # one forward per step: the evaluation's are not counted
    lengths = sorted(len(x) for x in data.train["input_ids"])
    assert 3 * lengths[0] * 8 <= sum(tokens) <= 3 * lengths[-1] * 8
