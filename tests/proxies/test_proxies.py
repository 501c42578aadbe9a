"""Proxies: non-degenerate scores for every candidate kind, joint == one candidate at
a time, the model left untouched, grad-proj's closed forms, and the registry's errors."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import proxies
from nas import discover
from proxies.base import CandidateSignal
from proxies.grad_proj import kron_rearrange, more_blocks, more_rank_pattern, potential
from proxies.signals import scoring_module
from search_spaces import SPACES, SearchSpace, make_adapter
from search_spaces.space import Candidate, freeze_choice

from tests.conftest import linear_base, make_tiny_model, tiny_batch

# Every kind (two sizes where a kind has one) and every shortcut, sized for hidden 32 / ffn 48.
ALL_KINDS = SearchSpace(
    name="all-kinds",
    choices=[{"type": "lora", "rank": 2}, {"type": "lora", "rank": 4},
             {"type": "more", "nblocks": 4, "rank": 2}, {"type": "more", "nblocks": 2, "rank": 4},
             {"type": "circulant"}, {"type": "toeplitz"},
             {"type": "kronecker", "rank": 4}, {"type": "ldr", "rank": 1}],
    shortcuts=["s_res1", "s_res2", "s_in", "s_cut"],
)
PROXY_NAMES = sorted(proxies.PROXIES)


def batches(n=2, labels=True):
    out = []
    for s in range(n):
        b = tiny_batch(batch=3, seq=7, seed=10 + s)
        if labels:
            b["labels"] = torch.tensor([0, 1, 1])
        out.append(b)
    return out


def kind_of(c):
    return "shortcut" if c.is_shortcut else c.label


@pytest.fixture(scope="module")
def bert():
    m = make_tiny_model("bert")
    return m, discover(m)


@pytest.fixture(scope="module")
def llama():
    m = make_tiny_model("llama")
    return m, discover(m)


# ---- non-degenerate scores for every kind ------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_every_proxy_scores_every_kind(family, request):
    model, layout = request.getfixturevalue(family)
    cands = ALL_KINDS.candidates(layout)
    kinds = {kind_of(c) for c in cands}
    assert {"shortcut", "lora r2", "more N4 r2", "circulant", "toeplitz", "kronecker r4", "ldr r1"} <= kinds
    all_scores, _ = proxies.score_many(model, layout, cands, batches(), PROXY_NAMES)
    for name, scores in all_scores.items():
        assert set(scores) == {c.key for c in cands}
        for kind in kinds:
            vals = [scores[c.key] for c in cands if kind_of(c) == kind]
            assert all(math.isfinite(v) for v in vals), (name, kind)
            assert all(v > 0 for v in vals), (name, kind, vals)  # no zero at init
            assert len(set(vals)) > 1, (name, kind, vals)  # differs across modules
        assert len(set(scores.values())) > len(cands) // 2, name


def test_score_candidates_matches_score_many(bert):
    model, layout = bert
    cands = ALL_KINDS.candidates(layout)[:20]
    many, _ = proxies.score_many(model, layout, cands, batches(), ["snip", "synflow"])
    for name in ("snip", "synflow"):
        assert proxies.score_candidates(model, layout, cands, batches(), name) == many[name]


# ---- joint == one at a time ---------------------------------------------------------------------
def _subset(cands):
    """One candidate per kind (cycling through roles and layers), plus every shortcut kind."""
    seen, out = set(), []
    for i, c in enumerate(cands):
        k = kind_of(c) if not c.is_shortcut else c.role
        if k not in seen and (c.is_shortcut or (i // 8) % 3 == len(seen) % 3):
            seen.add(k)
            out.append(c)
    return out


@pytest.mark.parametrize("family,names", [("bert", PROXY_NAMES), ("llama", ["grad-norm", "fisher", "grad-proj"])])
def test_joint_equals_one_at_a_time(family, names):
    model = make_tiny_model(family).double()
    layout = discover(model)
    cands = _subset(ALL_KINDS.candidates(layout))
    assert {c.role for c in cands if c.is_shortcut} == {"s_res1", "s_res2", "s_in", "s_cut"}
    assert len({kind_of(c) for c in cands}) == 9 and len({c.layer for c in cands}) == 2
    for name in names:
        joint = proxies.score_candidates(model, layout, cands, batches(), name)
        alone = proxies.score_candidates(model, layout, cands, batches(), name, joint=False)
        for c in cands:
            assert joint[c.key] == pytest.approx(alone[c.key], rel=1e-7, abs=1e-14), (name, c.key)


def test_joint_gradients_equal_real_adapter_gradients(bert):
    """The signal itself (dL/dθ and G), not only the scores, matches the attached adapter."""
    from proxies.check import one_at_a_time_signal
    from proxies.signals import collect_gradients, joint_signals

    model = make_tiny_model("bert").double()
    layout = discover(model)
    cands = _subset(ALL_KINDS.candidates(layout))[:12]
    p = proxies.get_proxy("fisher")
    G, per_batch = collect_gradients(model, layout, [c.target for c in cands if not c.is_shortcut],
                                     [c.target for c in cands if c.is_shortcut], batches(), keep_batches=True)
    for sig in joint_signals(cands, layout, G, per_batch, p):
        ref = one_at_a_time_signal(model, layout, sig.candidate, batches(), p)
        torch.testing.assert_close(sig.G, ref.G, rtol=1e-9, atol=1e-12)
        for a, b in zip(sig.grads, ref.grads):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)
        for a, b in zip(sig.channel_dots, ref.channel_dots):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)


# ---- the model is left exactly as it was ---------------------------------------------------------
def _snapshot(model):
    return {
        "values": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "flags": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "types": [(n, type(m).__name__) for n, m in model.named_modules()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "rng": torch.get_rng_state(),
    }


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_model_unchanged_after_scoring(family):
    model = make_tiny_model(family)
    layout = discover(model)
    model.train()
    for p in list(model.parameters())[::3]:
        p.requires_grad_(False)
    before = _snapshot(model)
    cands = ALL_KINDS.candidates(layout)
    proxies.score_many(model, layout, cands, batches(), PROXY_NAMES)
    proxies.score_candidates(model, layout, cands[:6] + cands[-2:], batches(), "synflow", joint=False)
    proxies.score_candidates(model, layout, cands[:6] + cands[-2:], batches(), "fisher", joint=False)
    after = _snapshot(model)
    assert before["values"].keys() == after["values"].keys()
    for k, v in before["values"].items():
        assert torch.equal(v, after["values"][k]), k
    for key in ("flags", "modes", "types", "hooks"):
        assert before[key] == after[key], key
    assert all(g is None for g in after["grads"])
    assert torch.equal(before["rng"], after["rng"])
    assert not hasattr(model, "more_shortcuts")


def test_scoring_a_model_with_a_plan_applied(bert):
    """Dynamic re-scoring: with adapters already attached, G is the wrapped base weight's."""
    from nas import Plan, apply_plan

    model, layout = bert
    cands = ALL_KINDS.candidates(layout)
    clean = proxies.score_candidates(model, layout, cands, batches(), "grad-proj")
    m2 = make_tiny_model("bert")
    lora = [c for c in cands if c.label == "lora r2" and c.layer == 1]
    apply_plan(m2, Plan.from_candidates(lora, layout, model={"name_or_path": "tiny"}), layout)
    wrapped = proxies.score_candidates(m2, layout, cands, batches(), "grad-proj")
    for c in cands:  # B = 0: the plan adds nothing yet, so the scores are the same
        assert wrapped[c.key] == pytest.approx(clean[c.key], rel=1e-5)


# ---- scoring init --------------------------------------------------------------------------------
def test_scoring_init_has_no_zero_factor_and_is_seeded(llama):
    _, layout = llama
    for c in ALL_KINDS.candidates(layout)[:12] + ALL_KINDS.candidates(layout)[-3:]:
        a = scoring_module(c, layout, seed=3)
        b = scoring_module(c, layout, seed=3)
        d = scoring_module(c, layout, seed=4)
        pa = list(a.parameters(recurse=False))
        assert pa and all(bool(p.detach().any()) for p in pa), c.key
        assert all(torch.equal(x, y) for x, y in zip(pa, b.parameters(recurse=False)))
        assert any(not torch.equal(x, y) for x, y in zip(pa, d.parameters(recurse=False)))


def test_standard_init_would_degenerate(bert):
    """The caveat the scoring init avoids (HeteroLoRA, arXiv 2406.14956): at B = 0, SNIP is exactly 0."""
    model, layout = bert
    c = next(c for c in ALL_KINDS.candidates(layout) if c.kind == "lora")
    base = model.get_submodule(c.target)
    std = make_adapter("lora", torch.nn.Linear(base.in_features, base.out_features), rank=2)
    assert not std.lora_B.any()  # hence |B * dL/dB| = 0 and dL/dA = scale B^T G = 0
    assert proxies.score_candidates(model, layout, [c], batches(), "snip")[c.key] > 0


# ---- errors -------------------------------------------------------------------------------------
def test_bad_proxy_name_lists_valid_names(bert):
    model, layout = bert
    with pytest.raises(ValueError) as e:
        proxies.score_candidates(model, layout, ALL_KINDS.candidates(layout), batches(), "gradnorm")
    for name in PROXY_NAMES:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="valid proxies"):
        proxies.get_proxy("nope")


def test_batches_without_labels_need_a_loss_fn(bert):
    model, layout = bert
    cands = ALL_KINDS.candidates(layout)[:4]
    with pytest.raises(ValueError, match="labels"):
        proxies.score_candidates(model, layout, cands, batches(labels=False), "grad-norm")

    def loss_fn(m, b):
        return m(**b).logits.pow(2).mean()

    s = proxies.score_candidates(model, layout, cands, batches(labels=False), "grad-norm", loss_fn=loss_fn)
    assert all(v > 0 for v in s.values())


def test_registry_contract():
    assert {"grad-norm", "snip", "synflow", "fisher", "grad-proj"} <= set(proxies.PROXIES)
    assert proxies.DEFAULT_PROXY in proxies.PROXIES
    for name, cls in proxies.PROXIES.items():
        assert cls.name == name and cls.signal in ("data", "synflow")


# ---- grad-proj: the closed forms are the sup over each family --------------------------------------
def _sig(kind, d_in, d_out, G, **hp):
    c = Candidate("m", 0, "q", freeze_choice({"type": kind, **hp}), 0)
    return CandidateSignal(candidate=c, G=G)


def _align(G, dw):
    return float(((G * dw).sum() / dw.norm()).detach())


SHAPES = [(12, 20), (20, 12), (16, 16), (10, 7)]


@pytest.mark.parametrize("d_in,d_out", SHAPES)
@pytest.mark.parametrize("nblocks,rank", [(1, 2), (2, 1), (2, 3), (3, 2), (4, 4), (4, 1)])
def test_more_potential_is_the_sup(d_in, d_out, nblocks, rank):
    g = torch.Generator().manual_seed(d_in * 7 + nblocks * 3 + rank)
    G = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    val = potential(_sig("more", d_in, d_out, G, nblocks=nblocks, rank=rank))
    ad = make_adapter("more", linear_base(d_in, d_out), nblocks=nblocks, rank=rank)
    for _ in range(5):  # any MoRe update aligns at most this well
        with torch.no_grad():
            ad.blkdiag1.normal_(generator=g)
            ad.blkdiag2.normal_(generator=g)
        assert _align(G, ad.delta_weight()) <= val + 1e-9
    # ... and the block-wise truncated SVD, written into the factors, attains it
    blocks = more_blocks(G, nblocks)
    m = more_rank_pattern(nblocks, rank)
    used = torch.zeros(nblocks, nblocks, dtype=torch.long)
    with torch.no_grad():
        ad.blkdiag1.zero_()
        ad.blkdiag2.zero_()
        for l in range(nblocks):
            for a in range(rank):
                k, j = divmod(a * nblocks + l, rank)
                U, S, Vh = torch.linalg.svd(blocks[l, k], full_matrices=False)
                i = int(used[l, k])
                used[l, k] += 1
                if i < len(S):
                    ad.blkdiag2[l, :, a] = U[:, i] * S[i]
                    ad.blkdiag1[k, j, :] = Vh[i]
    assert torch.equal(used, m)
    assert _align(G, ad.delta_weight()) == pytest.approx(val, rel=1e-9)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_lora_and_kronecker_potentials_are_attained(rank):
    g = torch.Generator().manual_seed(rank)
    G = torch.randn(12, 18, generator=g, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(G)
    best = (U[:, :rank] * S[:rank]) @ Vh[:rank]
    assert potential(_sig("lora", 18, 12, G, rank=rank)) == pytest.approx(_align(G, best), rel=1e-12)
    ad = make_adapter("kronecker", linear_base(18, 12), rank=rank)  # r divides 18 and 12: exact
    r = rank
    R = kron_rearrange(G, r)
    u, s, vh = torch.linalg.svd(R)
    with torch.no_grad():
        ad.kron_B.copy_((u[:, 0] * s[0]).reshape(ad.kron_B.shape))
        ad.kron_A.copy_(vh[0].reshape(ad.kron_A.shape))
    val = potential(_sig("kronecker", 18, 12, G, rank=r))
    assert _align(G, ad.delta_weight()) == pytest.approx(val, rel=1e-9)
    for _ in range(5):
        with torch.no_grad():
            ad.kron_A.normal_(generator=g)
            ad.kron_B.normal_(generator=g)
        assert _align(G, ad.delta_weight()) <= val + 1e-9


@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_circulant_potential_is_the_subspace_projection(d_in, d_out):
    G = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(d_in), dtype=torch.float64)
    ad = make_adapter("circulant", linear_base(d_in, d_out))
    n = ad.circ_c.numel()
    basis = []
    for t in range(n):  # the update for c = e_t, by the adapter itself
        with torch.no_grad():
            ad.circ_c.zero_()
            ad.circ_c[t] = 1.0
        basis.append(ad.delta_weight().flatten())
    Bm = torch.stack(basis, 1)
    coef = torch.linalg.lstsq(Bm, G.flatten()[:, None]).solution
    proj = (Bm @ coef).flatten()
    assert potential(_sig("circulant", d_in, d_out, G)) == pytest.approx(float(proj.norm().detach()), rel=1e-9)


@pytest.mark.parametrize("kind,hp", [("toeplitz", {}), ("ldr", {"rank": 2})])
def test_structured_lower_bound_is_attained_and_ascent_only_helps(kind, hp):
    G = torch.randn(16, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = Candidate("m", 0, "q", freeze_choice({"type": kind, **hp}), 0)
    layout = SimpleNamespace(module=lambda name: SimpleNamespace(d_in=12, d_out=16), hidden_size=16)
    build = lambda: scoring_module(c, layout, dtype=torch.float64)  # noqa: E731
    lower = potential(CandidateSignal(candidate=c, G=G), ascent_steps=0)
    from proxies.grad_proj import _warm_start, circulant_energy, sym_toeplitz_energy

    _, coef = (sym_toeplitz_energy if kind == "toeplitz" else circulant_energy)(G, {})
    m = build()
    _warm_start(kind, m, coef)
    assert _align(G, m.delta_weight()) == pytest.approx(lower, rel=2e-2)  # warm start ~ realises it
    up = potential(CandidateSignal(candidate=c, G=G, build=build), ascent_steps=10)
    assert up >= lower


def test_grad_proj_grows_with_capacity(bert):
    model, layout = bert
    space = SearchSpace(name="r", choices=[{"type": "lora", "rank": r} for r in (1, 2, 4, 8)]
                        + [{"type": "more", "nblocks": 4, "rank": r} for r in (1, 2, 4)])
    cands = space.candidates(layout)
    s = proxies.score_candidates(model, layout, cands, batches(), "grad-proj")
    for mod in {c.target for c in cands}:
        for kind in ("lora", "more"):
            vals = [s[c.key] for c in cands if c.target == mod and c.kind == kind]
            assert vals == sorted(vals)


# ---- the real packaged model --------------------------------------------------------------------
@pytest.mark.slow
def test_real_minilm_no_proxy_degenerates():
    from nas.models import load_model, load_tokenizer

    model, tok = load_model(None), load_tokenizer(None)
    layout = discover(model)
    cands = [c for c in SPACES["default"].candidates(layout) if c.layer in (0, 5)]
    texts = ["a gripping, beautifully acted film", "dull and far too long",
             "the plot makes no sense at all", "one of the best films of the year"]
    b = dict(tok(texts, padding=True, return_tensors="pt"))
    b["labels"] = torch.tensor([1, 0, 0, 1])
    scores, _ = proxies.score_many(model, layout, cands, [b], PROXY_NAMES)
    for name, s in scores.items():
        vals = list(s.values())
        assert all(math.isfinite(v) for v in vals) and all(v > 0 for v in vals), name
        for kind in {kind_of(c) for c in cands}:
            assert len({s[c.key] for c in cands if kind_of(c) == kind}) > 1, (name, kind)
