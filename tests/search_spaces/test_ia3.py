"""(IA)^3: the rescaled projection against the paper's formula, on both sides (the contract tests
in test_lora.py run the default side), merging, counts and a clear error for a bad side."""
from __future__ import annotations

import pytest
import torch

from search_spaces import count_params, make_adapter
from search_spaces.space import choice_label

from tests.conftest import linear_base, randomize_


def build(side, d_in=12, d_out=20, conv1d=False):
    ad = make_adapter("ia3", linear_base(d_in, d_out, conv1d=conv1d), side=side)
    with torch.no_grad():
        randomize_(ad.trainable_parameters(), std=0.3, seed=1)
    return ad


def weight_bias(ad):
    w = ad.base.weight.detach()
    return (w.T if ad.base.__class__.__name__ == "Conv1D" else w), ad.base.bias.detach()


@pytest.mark.parametrize("conv1d", [False, True])
@pytest.mark.parametrize("side", ["out", "in"])
def test_forward_is_the_rescaled_projection_and_merges(side, conv1d):
    ad = build(side, conv1d=conv1d)
    w, b = weight_bias(ad)
    s = ad.ia3_s.detach()
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    # Liu et al. (2022): rescaled keys/values (output), rescaled MLP activation (input); bias as is.
    want = (x @ w.T) * (1 + s) + b if side == "out" else (x * (1 + s)) @ w.T + b
    y = ad(x)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y - ad.base(x), x @ ad.delta_weight().T, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y - ad.base(x), ad.delta(x), rtol=1e-10, atol=1e-10)
    w0 = ad.base.weight.detach().clone()
    ad.merge()
    torch.testing.assert_close(ad.base(x), y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ad(x), y, rtol=1e-10, atol=1e-10)
    ad.unmerge()
    torch.testing.assert_close(ad.base.weight, w0, rtol=1e-12, atol=1e-12)
    assert torch.equal(ad.base.bias, b)


def test_counts_follow_the_side_and_gradients_reach_the_vector():
    assert count_params("ia3", 384, 1536) == 1536
    assert count_params("ia3", 1536, 384, side="in") == 1536
    assert count_params("ia3", 1536, 384, side="out") == 384
    ad = make_adapter("ia3", linear_base(8, 6, dtype=torch.float32), side="in")
    assert ad.ia3_s.shape == (8,) and not ad.ia3_s.any()
    ad(torch.randn(4, 8)).square().sum().backward()
    assert ad.ia3_s.grad.abs().sum() > 0


def test_bad_side_is_named():
    with pytest.raises(ValueError, match="side must be one of"):
        make_adapter("ia3", linear_base(8, 8), side="both")
    with pytest.raises(ValueError, match="side must be one of"):
        count_params("ia3", 8, 8, side="middle")


def test_label():
    assert choice_label({"type": "ia3", "side": "in"}) == "ia3 in"
    assert choice_label({"type": "lora", "rank": 4, "alpha": 8}) == "lora r4"
