"""LoRA, plus the adapter contract checked for EVERY registered type.

The contract tests are parametrized over ``search_spaces.ADAPTERS`` at collection time, so a
new type that calls ``register`` is covered without touching this file.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from search_spaces import ADAPTERS, Adapter, adapter_class, count_params, make_adapter

from tests.conftest import linear_base, randomize_

KINDS = sorted(ADAPTERS)
# Shapes where every type's default hyper-parameters fit (kronecker's default rank is 8).
SHAPES = [(16, 16), (16, 24), (24, 16)]


def build(kind, d_in, d_out, *, conv1d=False, randomize=True, dtype=torch.float64, seed=0, **hp):
    ad = make_adapter(kind, linear_base(d_in, d_out, conv1d=conv1d, dtype=dtype, seed=seed), **hp)
    if randomize:
        randomize_(ad.trainable_parameters(), std=0.3, seed=seed + 1)
    return ad


# ---- LoRA ------------------------------------------------------------------------------

def test_lora_delta_weight_formula():
    ad = build("lora", 12, 20, rank=3, alpha=6)
    assert ad.lora_A.shape == (3, 12) and ad.lora_B.shape == (20, 3)
    assert ad.scale == 2.0
    expected = 2.0 * ad.lora_B.detach() @ ad.lora_A.detach()
    torch.testing.assert_close(ad.delta_weight(), expected, rtol=1e-12, atol=1e-12)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    torch.testing.assert_close(ad(x), ad.base(x) + x @ expected.T, rtol=1e-12, atol=1e-12)
    assert torch.linalg.matrix_rank(ad.delta_weight()).item() == 3


def test_lora_defaults_and_count():
    ad = make_adapter("lora", nn.Linear(16, 24))
    assert ad.hparams == {"rank": 8, "alpha": 16.0}
    assert ad.scale == 2.0
    assert count_params("lora", 16, 24) == 8 * (16 + 24)
    assert count_params("lora", 384, 1536, rank=4) == 4 * (384 + 1536)
    assert torch.count_nonzero(ad.lora_B) == 0
    assert ad.lora_A.abs().max() <= 1 / 16 ** 0.5 and ad.lora_A.abs().max() > 0


@pytest.mark.parametrize("conv1d", [False, True])
def test_lora_fast_forward_matches_plain_formula_with_gradients(conv1d):
    """LoRA.forward (scale on h, fused addmm) == base(x) + (alpha/r)·(x Aᵀ) Bᵀ, grads too."""
    ad = build("lora", 12, 20, rank=3, alpha=7.5, conv1d=conv1d)
    x = torch.randn(2, 4, 12, dtype=torch.float64)
    g = torch.randn(2, 4, 20, dtype=torch.float64)
    x1 = x.clone().requires_grad_(True)
    ad(x1).backward(g)
    fast = (x1.grad, ad.lora_A.grad.clone(), ad.lora_B.grad.clone())
    ad.zero_grad()
    x2 = x.clone().requires_grad_(True)
    (ad.base(x2) + 2.5 * ((x2 @ ad.lora_A.T) @ ad.lora_B.T)).backward(g)
    for a, b in zip(fast, (x2.grad, ad.lora_A.grad, ad.lora_B.grad)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hp", [{"rank": 0}, {"rank": -1}, {"rank": 2.5}, {"rank": "8"},
                                {"nblocks": 4}, {"alpha": "big"}])
def test_lora_bad_hparams(hp):
    with pytest.raises(ValueError):
        make_adapter("lora", nn.Linear(8, 8), **hp)


def test_lora_matches_peft():
    """Same A, B and alpha -> same outputs as PEFT's LoRA."""
    peft = pytest.importorskip("peft")

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(12, 20)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    ref = One()
    pm = peft.get_peft_model(One(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["proj"],
                                                    lora_dropout=0.0))
    pm.base_model.model.proj.base_layer.load_state_dict(ref.proj.state_dict())
    ours = make_adapter("lora", ref.proj, rank=4, alpha=8)
    randomize_(ours.trainable_parameters(), std=0.3)
    lyr = pm.base_model.model.proj
    with torch.no_grad():
        lyr.lora_A["default"].weight.copy_(ours.lora_A)
        lyr.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(3, 12)
    torch.testing.assert_close(ours(x), pm(x), rtol=1e-5, atol=1e-6)


# ---- the contract, for every registered type -------------------------------------------

def test_registry_has_the_known_types():
    assert {"lora", "more"} <= set(ADAPTERS)
    for kind, cls in ADAPTERS.items():
        assert issubclass(cls, Adapter) and cls.kind == kind
        assert adapter_class(kind) is cls
    with pytest.raises(ValueError, match="unknown adapter type"):
        adapter_class("nope")
    assert count_params("off", 16, 16) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_merge_unmerge_round_trip(kind, d_in, d_out):
    ad = build(kind, d_in, d_out)
    x = torch.randn(4, 3, d_in, dtype=torch.float64)
    w0 = ad.base.weight.detach().clone()
    y = ad(x)
    assert not torch.allclose(y, ad.base(x))  # randomized: the update is non-trivial
    ad.merge()
    assert ad.merged
    assert not torch.allclose(ad.base.weight, w0)
    torch.testing.assert_close(ad(x), y, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ad.base(x), y, rtol=1e-9, atol=1e-9)  # folded into the base
    ad.merge()  # idempotent
    torch.testing.assert_close(ad(x), y, rtol=1e-9, atol=1e-9)
    ad.unmerge()
    assert not ad.merged
    torch.testing.assert_close(ad.base.weight, w0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ad(x), y, rtol=1e-9, atol=1e-9)
    ad.unmerge()  # no-op when not merged
    torch.testing.assert_close(ad.base.weight, w0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_delta_weight_is_the_forward_update(kind, d_in, d_out):
    ad = build(kind, d_in, d_out)
    x = torch.randn(7, d_in, dtype=torch.float64)
    dw = ad.delta_weight()
    assert dw.shape == (d_out, d_in)
    torch.testing.assert_close(ad(x) - ad.base(x), x @ dw.T, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dw, ad.dense_by_probe(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_count_params_equals_real_trainable(kind, d_in, d_out):
    hp_sets = [{}]
    if "rank" in ADAPTERS[kind].hparam_defaults:
        hp_sets.append({"rank": 2})
    for hp in hp_sets:
        ad = make_adapter(kind, nn.Linear(d_in, d_out), **hp)
        trainable = sum(p.numel() for p in ad.parameters() if p.requires_grad)
        assert trainable > 0
        assert count_params(kind, d_in, d_out, **hp) == trainable
        assert sum(p.numel() for p in ad.trainable_parameters()) == trainable
        assert not any(p.requires_grad for p in ad.base.parameters())
        # hparams round-trip: rebuilding from the stored hparams gives the same count.
        assert count_params(kind, d_in, d_out, **ad.hparams) == trainable


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_init_output_equals_base_exactly(kind, d_in, d_out):
    ad = build(kind, d_in, d_out, randomize=False, dtype=torch.float32)
    x = torch.randn(2, 5, d_in)
    y = ad(x)
    assert torch.equal(y, ad.base(x))
    # ... and yet it can learn: some trainable parameter gets a non-zero gradient.
    y.square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ad.trainable_parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_disabled_equals_base_exactly(kind):
    ad = build(kind, 16, 24, dtype=torch.float32)
    x = torch.randn(3, 16)
    assert not torch.allclose(ad(x), ad.base(x))
    ad.enabled = False
    assert torch.equal(ad(x), ad.base(x))
    ad.merge()  # merging a disabled adapter must not touch the base
    assert not ad.merged
    assert torch.equal(ad(x), ad.base(x))
    ad.enabled = True
    assert not torch.allclose(ad(x), ad.base(x))


@pytest.mark.parametrize("kind", KINDS)
def test_works_on_conv1d_base(kind):
    d_in, d_out = 12, 20
    lin_equiv = None
    ad = build(kind, d_in, d_out, conv1d=True)
    assert (ad.d_in, ad.d_out) == (d_in, d_out)
    # The same adapter weights on an equivalent nn.Linear give the same function.
    lin_equiv = nn.Linear(d_in, d_out).double()
    with torch.no_grad():
        lin_equiv.weight.copy_(ad.base.weight.T)
        lin_equiv.bias.copy_(ad.base.bias)
    twin = make_adapter(kind, lin_equiv, **ad.hparams)
    twin.load_state_dict({k: v for k, v in ad.state_dict().items() if not k.startswith("base.")},
                         strict=False)
    x = torch.randn(2, 3, d_in, dtype=torch.float64)
    y = ad(x)
    assert y.shape == (2, 3, d_out)
    torch.testing.assert_close(y, twin(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(y, ad.base(x) + x @ ad.delta_weight().T, rtol=1e-9, atol=1e-9)
    w0 = ad.base.weight.detach().clone()
    ad.merge()
    torch.testing.assert_close(ad.base(x), y, rtol=1e-9, atol=1e-9)
    ad.unmerge()
    torch.testing.assert_close(ad.base.weight, w0, rtol=1e-12, atol=1e-12)
    ad.enabled = False
    assert torch.equal(ad(x), ad.base(x))


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_hparam_rejected(kind):
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        make_adapter(kind, nn.Linear(16, 16), definitely_not_a_hparam=1)
