"""SURM adapter types (circulant, toeplitz, kronecker, ldr): exactness against independent
dense constructions (scipy / numpy / index formulas), parameter counts, init, verbs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sla
import torch
from torch import nn

from search_spaces import count_params, make_adapter

SHAPES = [(16, 16), (16, 24), (24, 16), (10, 7), (5, 9)]  # (5, 9): odd n
# Small ranks so every shape (including 10 -> 7) is valid.
CASES = [("circulant", {}), ("toeplitz", {}), ("kronecker", {"rank": 3}),
         ("kronecker", {"rank": 1}), ("ldr", {"rank": 2}), ("ldr", {"rank": 1})]
IDS = [f"{k}-{hp}" for k, hp in CASES]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def skew_circulant(s: np.ndarray) -> np.ndarray:
    """First column s, first row [s0, -s_{n-1}, ..., -s_1]."""
    return sla.toeplitz(s, np.concatenate([s[:1], -s[:0:-1]]))


def reference_dense(ad) -> np.ndarray:
    """ΔW (d_out, d_in) built independently of the adapter's own code paths."""
    d_in, d_out, hp = ad.d_in, ad.d_out, ad.hparams
    if ad.kind == "circulant":
        m = sla.circulant(_np(ad.circ_c))
    elif ad.kind == "toeplitz":
        m = sla.toeplitz(_np(ad.toep_b)) @ sla.toeplitz(_np(ad.toep_a))
    elif ad.kind == "kronecker":
        m = np.kron(_np(ad.kron_B), _np(ad.kron_A))
    elif ad.kind == "ldr":
        c, s = _np(ad.ldr_c), _np(ad.ldr_s)
        m = sum(sla.circulant(c[i]) @ skew_circulant(s[i]) for i in range(hp["rank"]))
    else:
        raise AssertionError(ad.kind)
    return hp["scale"] * m[:d_out, :d_in]


def build(kind, hp, d_in, d_out, *, randomize=True, seed=0, conv1d=False, **extra):
    torch.manual_seed(seed)
    if conv1d:
        from transformers.pytorch_utils import Conv1D
        base = Conv1D(nf=d_out, nx=d_in)
        nn.init.normal_(base.weight, std=0.2)
        nn.init.normal_(base.bias, std=0.2)
    else:
        base = nn.Linear(d_in, d_out).double()
    ad = make_adapter(kind, base, **hp, **extra)
    if randomize:
        with torch.no_grad():
            for p in ad.trainable_parameters():
                p.normal_()
    return ad


@pytest.mark.parametrize("kind,hp", CASES, ids=IDS)
@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_dense_forward_and_count(kind, hp, d_in, d_out):
    ad = build(kind, hp, d_in, d_out, scale=0.7)
    x = torch.randn(3, 5, d_in, dtype=torch.float64)
    dw = ad.delta_weight()
    assert dw.shape == (d_out, d_in)
    np.testing.assert_allclose(_np(dw), reference_dense(ad), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ad(x), ad.base(x) + x @ dw.T, rtol=1e-9, atol=1e-9)
    # delta() is unscaled; scale multiplies it.
    torch.testing.assert_close(ad.scale * ad.delta(x), x @ dw.T, rtol=1e-9, atol=1e-9)
    n_train = sum(p.numel() for p in ad.parameters() if p.requires_grad)
    assert n_train == count_params(kind, d_in, d_out, **hp) == sum(
        p.numel() for p in ad.trainable_parameters())


@pytest.mark.parametrize("kind,hp", CASES, ids=IDS)
@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_init_is_identity_with_gradient(kind, hp, d_in, d_out):
    ad = build(kind, hp, d_in, d_out, randomize=False)
    x = torch.randn(4, d_in, dtype=torch.float64)
    y = ad(x)
    assert torch.equal(y, ad.base(x))
    assert torch.count_nonzero(ad.delta_weight()) == 0
    (y.square().sum()).backward()
    grads = [p.grad for p in ad.trainable_parameters()]
    assert all(g is not None for g in grads)
    assert any(torch.count_nonzero(g) > 0 for g in grads)
    assert all(p.grad is None for p in ad.base.parameters())


@pytest.mark.parametrize("kind,hp", CASES, ids=IDS)
@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_merge_unmerge_enabled(kind, hp, d_in, d_out):
    ad = build(kind, hp, d_in, d_out)
    x = torch.randn(6, d_in, dtype=torch.float64)
    w0 = ad.base.weight.detach().clone()
    y = ad(x)
    ad.merge()
    torch.testing.assert_close(ad(x), y, rtol=1e-9, atol=1e-9)
    ad.unmerge()
    torch.testing.assert_close(ad.base.weight, w0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ad(x), y, rtol=1e-9, atol=1e-9)
    ad.enabled = False
    assert torch.equal(ad(x), ad.base(x))


@pytest.mark.parametrize("kind,hp", CASES, ids=IDS)
def test_conv1d_base(kind, hp):
    d_in, d_out = 12, 20
    ad = build(kind, hp, d_in, d_out, conv1d=True)
    assert (ad.d_in, ad.d_out) == (d_in, d_out)
    x = torch.randn(2, 3, d_in)
    dw = ad.delta_weight()
    np.testing.assert_allclose(_np(dw), reference_dense(ad), rtol=1e-4, atol=1e-4)
    y = ad(x)
    torch.testing.assert_close(y, ad.base(x) + x @ dw.T, rtol=1e-4, atol=1e-4)
    w0 = ad.base.weight.detach().clone()
    ad.merge()
    torch.testing.assert_close(ad(x), y, rtol=1e-4, atol=1e-4)
    ad.unmerge()
    torch.testing.assert_close(ad.base.weight, w0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["circulant", "toeplitz", "kronecker", "ldr"])
def test_half_precision_runs(kind):
    base = nn.Linear(16, 24).to(torch.bfloat16)
    ad = make_adapter(kind, base) if kind != "kronecker" else make_adapter(kind, base, rank=4)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    y = ad(x)
    assert y.dtype == torch.bfloat16 and y.shape == (3, 24)
    assert all(p.dtype == torch.bfloat16 for p in ad.trainable_parameters())


def test_param_formulas():
    n = 1536
    assert count_params("circulant", 384, 1536) == n
    assert count_params("toeplitz", 1536, 384) == 2 * n
    assert count_params("ldr", 384, 1536, rank=3) == 2 * 3 * n
    assert count_params("ldr", 384, 1536) == 2 * 2 * n
    assert count_params("kronecker", 384, 1536) == 8 * 48 + 192 * 8
    assert count_params("kronecker", 10, 7, rank=3) == 3 * math.ceil(10 / 3) + math.ceil(7 / 3) * 3


@pytest.mark.parametrize("kind,bad", [
    ("kronecker", {"rank": 0}), ("kronecker", {"rank": 8}), ("kronecker", {"rank": 2.0}),
    ("ldr", {"rank": 0}), ("ldr", {"rank": 11}), ("ldr", {"rank": -1}),
    ("circulant", {"rank": 2}), ("toeplitz", {"bogus": 1}), ("kronecker", {"alpha": 2}),
    ("ldr", {"bogus": 1}), ("circulant", {"scale": "big"}), ("toeplitz", {"scale": float("nan")}),
])
def test_bad_hparams(kind, bad):
    with pytest.raises(ValueError):
        count_params(kind, 10, 7, **bad)
    with pytest.raises(ValueError):
        make_adapter(kind, nn.Linear(10, 7), **bad)


def test_kronecker_default_rank_too_big_for_small_layer():
    with pytest.raises(ValueError, match="rank"):
        make_adapter("kronecker", nn.Linear(10, 7))  # default rank 8 > min(10, 7)
