"""MoRe (Tan et al., "MoRe Fine-Tuning with 10x Fewer Parameters", arXiv 2408.17383): exactness
against independent dense constructions, rank, the N = 1 == LoRA identity, hyper-parameters, parameter names and state_dict loading."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import search_spaces.more as more_mod
from search_spaces import count_params, make_adapter
from search_spaces.more import monarch_apply, monarch_factors, more_block_sizes

from tests.conftest import linear_base


# ---- independent references, written from the MoRe paper only ---------------------------

def ref_dense_columns(L1: np.ndarray, L2: np.ndarray, d_in: int, d_out: int) -> np.ndarray:
    """ΔW column by column: apply the 5 forward steps to every unit vector e_c."""
    N, r, p = L1.shape
    q = L2.shape[1]
    assert p == math.ceil(d_in / N) and q == math.ceil(p * d_out / d_in)
    M = np.zeros((d_out, d_in))
    for c in range(d_in):
        # 1. zero-pad e_c to N*p and split into N blocks of size p
        x = np.zeros(N * p)
        x[c] = 1.0
        blocks = [x[k * p:(k + 1) * p] for k in range(N)]
        # 2. v_k = L1[k] @ x_k, concatenated block-major: v[k*r + j]
        v = np.zeros(N * r)
        for k in range(N):
            vk = L1[k] @ blocks[k]
            for j in range(r):
                v[k * r + j] = vk[j]
        # 3. view v as (r, N) row-major, column l: z_l[a] = v[a*N + l]
        z = [np.array([v[a * N + l] for a in range(r)]) for l in range(N)]
        # 4. w_l = L2[l] @ z_l
        w = [L2[l] @ z[l] for l in range(N)]
        # 5. out[s*N + l] = w_l[s], truncated to d_out
        out = np.zeros(N * q)
        for l in range(N):
            for s in range(q):
                out[s * N + l] = w[l][s]
        M[:, c] = out[:d_out]
    return M


def ref_dense_index_formula(L1: np.ndarray, L2: np.ndarray, d_in: int, d_out: int) -> np.ndarray:
    """ΔW by index formula: out o = s*N + l, in c = k*p + i, the middle index a*N + l = k*r + j.

    ΔW[s*N + l, k*p + i] = Σ_a [ (a*N + l) // r == k ] · L2[l, s, a] · L1[k, (a*N + l) % r, i]
    """
    N, r, p = L1.shape
    q = L2.shape[1]
    big = np.zeros((N * q, N * p))
    for l in range(N):
        for a in range(r):
            k, j = divmod(a * N + l, r)
            for s in range(q):
                big[s * N + l, k * p:(k + 1) * p] += L2[l, s, a] * L1[k, j, :]
    return big[:d_out, :d_in]


def build_more(d_in, d_out, seed=0, conv1d=False, dtype=torch.float64, **hp):
    base = linear_base(d_in, d_out, conv1d=conv1d, dtype=dtype, seed=seed)
    ad = make_adapter("more", base, **hp)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for prm in (ad.blkdiag1, ad.blkdiag2):
            prm.copy_(torch.randn(prm.shape, generator=g, dtype=torch.float64).to(prm.dtype))
    return ad


def _np(t):
    return t.detach().double().cpu().numpy()


CASES = [  # (d_in, d_out, N, r)
    (16, 16, 4, 2), (16, 16, 2, 3), (16, 16, 8, 4), (16, 16, 16, 1),
    (12, 20, 4, 2), (12, 20, 3, 5), (20, 12, 4, 2), (20, 12, 3, 3), (20, 12, 6, 2),
    (10, 7, 4, 2), (10, 7, 3, 1), (7, 10, 2, 3), (9, 9, 4, 3),
]


@pytest.fixture(params=["dense-factors", "bmm"])
def forward_path(request, monkeypatch):
    """Run a test through each of MoRe's two forward implementations."""
    monkeypatch.setattr(more_mod, "DENSE_MAX_RANK", 10**9 if request.param == "dense-factors" else 0)
    return request.param


@pytest.mark.parametrize("d_in,d_out,N,r", CASES)
def test_dense_matches_independent_construction(d_in, d_out, N, r, forward_path):
    ad = build_more(d_in, d_out, nblocks=N, rank=r)
    L1, L2 = _np(ad.blkdiag1), _np(ad.blkdiag2)
    ref = ref_dense_columns(L1, L2, d_in, d_out)
    np.testing.assert_allclose(ref_dense_index_formula(L1, L2, d_in, d_out), ref, atol=1e-12)
    dw = ad.delta_weight()
    assert dw.shape == (d_out, d_in)
    np.testing.assert_allclose(_np(dw), ref, rtol=1e-10, atol=1e-10)
    # The batched forward path (not only the probe) matches too, with leading dims.
    x = torch.randn(2, 3, d_in, dtype=torch.float64)
    expected = ad.base(x) + x @ torch.from_numpy(ref).T
    torch.testing.assert_close(ad(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d_in,d_out,N,r", [(384, 1536, 4, 8), (1536, 384, 4, 4), (96, 384, 8, 2),
                                            (384, 384, 16, 8)])
def test_dense_matches_reference_large(d_in, d_out, N, r):
    ad = build_more(d_in, d_out, nblocks=N, rank=r)
    L1, L2 = _np(ad.blkdiag1), _np(ad.blkdiag2)
    ref = ref_dense_index_formula(L1, L2, d_in, d_out)
    np.testing.assert_allclose(_np(ad.delta_weight()), ref, rtol=1e-9, atol=1e-9)
    x = torch.randn(5, d_in, dtype=torch.float64)
    torch.testing.assert_close(ad.delta(x), x @ torch.from_numpy(ref).T, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ad(x) - ad.base(x), x @ torch.from_numpy(ref).T, rtol=1e-9, atol=1e-9)
    m1, m2 = monarch_factors(ad.blkdiag1, ad.blkdiag2, d_in, d_out)
    np.testing.assert_allclose(_np(m2 @ m1), ref, rtol=1e-9, atol=1e-9)
    if (d_in, d_out) == (96, 384):  # the column-by-column reference on one mid-size shape too
        np.testing.assert_allclose(ref_dense_columns(L1, L2, d_in, d_out), ref, atol=1e-10)


# (20, 12, 6, 2) is left out: p = ceil(20 / 6) = 4, so block 5 covers only padding and the
# reachable rank is 5·2 = 10, not min(N·r, d_in, d_out) = 12 (see the test below).
RANK_CASES = [c for c in CASES if c != (20, 12, 6, 2)] + [(64, 256, 4, 8), (256, 64, 8, 2)]


@pytest.mark.parametrize("d_in,d_out,N,r", RANK_CASES)
def test_rank_is_min_of_Nr_din_dout(d_in, d_out, N, r):
    ad = build_more(d_in, d_out, nblocks=N, rank=r, seed=3)
    rank = torch.linalg.matrix_rank(ad.delta_weight()).item()
    assert rank == min(N * r, d_in, d_out)


def test_rank_when_a_block_is_all_padding():
    """N that leaves a whole input block in the padding loses that block's rank."""
    d_in, d_out, N, r = 20, 12, 6, 2
    p, _ = more_block_sizes(d_in, d_out, N)
    assert (N - 1) * p >= d_in  # the last block sees only zeros
    ad = build_more(d_in, d_out, nblocks=N, rank=r, seed=3)
    assert torch.linalg.matrix_rank(ad.delta_weight()).item() == (N - 1) * r


def test_rank_exceeds_lora_at_equal_params():
    """The point of MoRe: same parameter count as LoRA r, but rank up to N·r."""
    d = 64
    assert count_params("more", d, d, nblocks=4, rank=2) == count_params("lora", d, d, rank=2)
    ad = build_more(d, d, nblocks=4, rank=2)
    assert torch.linalg.matrix_rank(ad.delta_weight()).item() == 8


@pytest.mark.parametrize("d_in,d_out,r", [(16, 16, 3), (12, 20, 4), (20, 12, 2), (10, 7, 1)])
def test_one_block_is_lora_without_scaling(d_in, d_out, r):
    base = linear_base(d_in, d_out)
    A = torch.randn(r, d_in, dtype=torch.float64)
    B = torch.randn(d_out, r, dtype=torch.float64)
    more = make_adapter("more", base, nblocks=1, rank=r)
    assert more.blkdiag1.shape == (1, r, d_in) and more.blkdiag2.shape == (1, d_out, r)
    more.load_state_dict({"blkdiag1": A[None], "blkdiag2": B[None]}, strict=False)
    torch.testing.assert_close(more.delta_weight(), B @ A, rtol=1e-12, atol=1e-12)
    assert more.scale == 1.0
    lora = make_adapter("lora", linear_base(d_in, d_out), rank=r, alpha=r)  # scale 1
    lora.load_state_dict({"lora_A": A, "lora_B": B}, strict=False)
    x = torch.randn(4, d_in, dtype=torch.float64)
    torch.testing.assert_close(more.delta(x), lora.delta(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(more(x), lora(x), rtol=1e-12, atol=1e-12)


def test_block_size_alternative():
    base = linear_base(16, 24)
    a = make_adapter("more", base, block_size=4, rank=2)
    assert a.hparams["nblocks"] == 4 and a.hparams["block_size"] is None
    assert a.blkdiag1.shape == (4, 2, 4)
    # Non-dividing block size rounds the block count up.
    b = make_adapter("more", linear_base(10, 7), block_size=4, rank=1)
    assert b.hparams["nblocks"] == 3
    assert count_params("more", 16, 24, block_size=4, rank=2) == count_params(
        "more", 16, 24, nblocks=4, rank=2)
    # Consistent nblocks + block_size is fine; a contradiction is an error.
    make_adapter("more", linear_base(16, 24), block_size=4, nblocks=4, rank=2)
    with pytest.raises(ValueError, match="contradicts"):
        make_adapter("more", linear_base(16, 24), block_size=4, nblocks=2, rank=2)


@pytest.mark.parametrize("d_in,d_out,N,r", [(16, 16, 4, 2), (12, 20, 4, 3), (20, 12, 3, 2),
                                            (384, 1536, 4, 8), (10, 7, 4, 1)])
def test_parameter_names_shapes_and_count(d_in, d_out, N, r):
    ad = make_adapter("more", nn.Linear(d_in, d_out), nblocks=N, rank=r)
    p, q = math.ceil(d_in / N), math.ceil(math.ceil(d_in / N) * d_out / d_in)
    assert more_block_sizes(d_in, d_out, N) == (p, q)
    own = dict(ad.named_parameters(recurse=False))
    assert set(own) == {"blkdiag1", "blkdiag2"}
    assert own["blkdiag1"].shape == (N, r, p)
    assert own["blkdiag2"].shape == (N, q, r)
    n = N * r * p + N * q * r
    assert count_params("more", d_in, d_out, nblocks=N, rank=r) == n
    assert sum(p_.numel() for p_ in ad.parameters() if p_.requires_grad) == n
    assert not any(p_.requires_grad for p_ in ad.base.parameters())


def test_param_count_equals_lora_when_square():
    for d in (64, 384, 768, 1024):
        for r in (1, 4, 8):
            assert count_params("more", d, d, nblocks=4, rank=r) == count_params("lora", d, d, rank=r)


def test_init_zero_update_and_kaiming_bound():
    ad = make_adapter("more", nn.Linear(32, 48), nblocks=4, rank=4)
    p = ad.blkdiag1.shape[-1]
    assert torch.count_nonzero(ad.blkdiag2) == 0
    assert ad.blkdiag1.abs().max() <= 1 / math.sqrt(p)
    assert ad.blkdiag1.std() > 0.3 / math.sqrt(p)  # actually random, not zeros
    x = torch.randn(3, 32)
    assert torch.equal(ad(x), ad.base(x))


def test_load_state_dict_by_names():
    """A checkpoint with the authors' names (blkdiag1/blkdiag2) loads and takes effect."""
    src = build_more(12, 20, nblocks=4, rank=2, dtype=torch.float32, seed=5)
    dst = make_adapter("more", linear_base(12, 20, dtype=torch.float32, seed=5), nblocks=4, rank=2)
    x = torch.randn(3, 12)
    assert not torch.allclose(dst(x), src(x))
    sd = {k: v for k, v in src.state_dict().items() if k.startswith("blkdiag")}
    assert set(sd) == {"blkdiag1", "blkdiag2"}
    missing, unexpected = dst.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) == {"base.weight", "base.bias"}
    torch.testing.assert_close(dst(x), src(x))
    # Full strict round trip too.
    dst2 = make_adapter("more", nn.Linear(12, 20), nblocks=4, rank=2)
    dst2.load_state_dict(src.state_dict())
    torch.testing.assert_close(dst2(x), src(x))
    # Wrong shapes are refused.
    with pytest.raises(RuntimeError):
        dst.load_state_dict({"blkdiag1": torch.zeros(2, 2, 6)}, strict=False)


@pytest.mark.parametrize("hp", [
    {"nblocks": 0}, {"rank": 0}, {"rank": -2}, {"rank": 1.5}, {"nblocks": 2.0},
    {"nblocks": 11}, {"block_size": 0}, {"block_size": 2.5}, {"bogus": 1}, {"alpha": 8},
    {"nblocks": "4"},
])
def test_bad_hparams_raise_value_error(hp):
    with pytest.raises(ValueError):
        make_adapter("more", nn.Linear(10, 7), **hp)
    with pytest.raises(ValueError):
        count_params("more", 10, 7, **hp)


def test_merge_unmerge_and_conv1d():
    for conv1d in (False, True):
        ad = build_more(12, 20, nblocks=4, rank=3, conv1d=conv1d)
        x = torch.randn(4, 12, dtype=torch.float64)
        dw = torch.from_numpy(ref_dense_columns(_np(ad.blkdiag1), _np(ad.blkdiag2), 12, 20))
        y = ad(x)
        torch.testing.assert_close(y, ad.base(x) + x @ dw.T, rtol=1e-10, atol=1e-10)
        w0 = ad.base.weight.detach().clone()
        ad.merge()
        assert ad.merged
        expected_w = w0 + (dw.T if conv1d else dw)
        torch.testing.assert_close(ad.base.weight, expected_w, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ad(x), y, rtol=1e-10, atol=1e-10)
        ad.unmerge()
        torch.testing.assert_close(ad.base.weight, w0, rtol=1e-12, atol=1e-12)


def test_gradients_flow_to_both_factors():
    ad = build_more(16, 24, nblocks=4, rank=2, dtype=torch.float32)
    x = torch.randn(5, 16)
    ad(x).square().sum().backward()
    assert ad.blkdiag1.grad is not None and ad.blkdiag1.grad.abs().sum() > 0
    assert ad.blkdiag2.grad is not None and ad.blkdiag2.grad.abs().sum() > 0
    assert ad.base.weight.grad is None


@pytest.mark.parametrize("d_in,d_out,N,r", [(16, 16, 4, 2), (12, 20, 3, 5), (20, 12, 6, 2), (10, 7, 4, 2)])
def test_dense_factors_have_the_monarch_structure(d_in, d_out, N, r):
    """M1 is block diagonal, M2 has one L2 entry per (row, block) and M2 @ M1 is ΔW."""
    ad = build_more(d_in, d_out, nblocks=N, rank=r)
    L1, L2 = _np(ad.blkdiag1), _np(ad.blkdiag2)
    m1, m2 = (_np(t) for t in monarch_factors(ad.blkdiag1, ad.blkdiag2, d_in, d_out))
    p, q = more_block_sizes(d_in, d_out, N)
    assert m1.shape == (N * r, d_in) and m2.shape == (d_out, N * r)
    for k in range(N):
        for j in range(r):
            for c in range(d_in):
                expected = L1[k, j, c - k * p] if k * p <= c < (k + 1) * p else 0.0
                assert m1[k * r + j, c] == expected
    for o in range(d_out):
        s_, l = divmod(o, N)
        for m in range(N * r):
            a, l2 = divmod(m, N)
            assert m2[o, m] == (L2[l, s_, a] if l2 == l else 0.0)
    np.testing.assert_allclose(m2 @ m1, ref_dense_columns(L1, L2, d_in, d_out), atol=1e-12)


@pytest.mark.parametrize("d_in,d_out,N,r", [(16, 16, 4, 2), (12, 20, 4, 3), (20, 12, 3, 2)])
def test_both_forward_paths_give_the_same_gradients(d_in, d_out, N, r, monkeypatch):
    x = torch.randn(2, 5, d_in, dtype=torch.float64)
    g = torch.randn(2, 5, d_out, dtype=torch.float64)
    grads = {}
    for path, limit in (("dense", 10**9), ("bmm", 0)):
        monkeypatch.setattr(more_mod, "DENSE_MAX_RANK", limit)
        ad = build_more(d_in, d_out, nblocks=N, rank=r, seed=7)
        xx = x.clone().requires_grad_(True)
        ad(xx).backward(g)
        grads[path] = (xx.grad, ad.blkdiag1.grad, ad.blkdiag2.grad)
    for a, b in zip(grads["dense"], grads["bmm"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # and the bmm function itself against the reference dense map
    ad = build_more(d_in, d_out, nblocks=N, rank=r, seed=7)
    ref = torch.from_numpy(ref_dense_columns(_np(ad.blkdiag1), _np(ad.blkdiag2), d_in, d_out))
    torch.testing.assert_close(monarch_apply(x, ad.blkdiag1, ad.blkdiag2, d_out), x @ ref.T,
                               rtol=1e-10, atol=1e-10)
