"""benchmarks/beyond_space.py's pure parts: the data-driven LoRA inits and the size of each method."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import beyond_space as bs  # noqa: E402
from search_spaces.lora import LoRA  # noqa: E402


def _lora(rank=2, d_in=12, d_out=10):
    torch.manual_seed(0)
    return LoRA(nn.Linear(d_in, d_out), rank=rank)


def test_gradient_aligned_a_spans_the_gradients_top_directions_and_starts_as_the_base():
    layer, x = _lora(), torch.randn(5, 12)
    before = layer(x)
    g = torch.randn(10, 3) @ torch.randn(3, 12)  # rank 3: the top-2 right directions are defined
    bs.align_to_gradient(layer, g)
    assert torch.equal(layer(x), before)  # B = 0: the layer is still the base
    a = layer.lora_A.detach()
    assert torch.allclose(a.norm(dim=1), torch.full((2,), math.sqrt(1 / 3)), atol=1e-6)
    _, _, vh = torch.linalg.svd(g)
    proj = vh[:2] @ (a / a.norm(dim=1, keepdim=True)).T  # A's rows lie in the top-2 subspace
    assert torch.allclose(proj.norm(dim=0), torch.ones(2), atol=1e-5)
    # ... so B's first gradient keeps more of the full gradient than a random A's would.
    assert (g @ a.T).norm() > (g @ _lora().lora_A.detach().T).norm()


def test_pissa_moves_the_principal_part_into_the_adapter_without_changing_the_layer():
    layer, x = _lora(rank=3), torch.randn(5, 12)
    w = layer.base.weight.detach().clone()
    before = layer(x)
    bs.pissa(layer)
    assert torch.allclose(layer(x), before, atol=1e-5)
    sv = torch.linalg.svdvals(w)
    assert torch.allclose(torch.linalg.svdvals(layer.delta_weight()), torch.cat([sv[:3], torch.zeros(7)]), atol=1e-5)
    assert torch.allclose(torch.linalg.svdvals(layer.base.weight), torch.cat([sv[3:], torch.zeros(3)]), atol=1e-5)


def test_each_method_fits_the_budget_on_a_minilm_shaped_model():
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                                     intermediate_size=1536, vocab_size=64))
    limit = 0.0002 * 22_713_216  # 0.02% of the packaged MiniLM's base parameters
    sizes = {name: bs.params_of(payload, 3840, model) for name, (payload, _) in bs.METHODS.items()}
    assert all(0 < s <= limit for s in sizes.values()), sizes
    assert sizes["LayerNorm after the FFN, layers 1-5 (LN-tuning)"] == 5 * 2 * 384
    assert sizes["LayerNorm scales of both LNs, layers 1-5 (LN-tuning, gamma only)"] == 5 * 2 * 384
    assert sizes["FFN up bias on layers 4-5, query bias on layers 3-5 (BitFit)"] == 2 * 1536 + 3 * 384
    assert sizes["VeRA r256 on value, every layer"] == 6 * (256 + 384)
    assert bs.named("bert.encoder.layer.1.output.LayerNorm.bias", ["encoder.layer.1.output.LayerNorm.bias"])
    assert not bs.named("bert.encoder.layer.11.output.LayerNorm.bias", ["layer.1.output.LayerNorm.bias"])
