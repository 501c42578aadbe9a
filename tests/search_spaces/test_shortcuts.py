"""HeteroLoRA shortcuts (arXiv 2406.14956): exact no-ops when off or at init, trainable when
on, added at the right place with the right source, rejected where they cannot exist."""
from __future__ import annotations

import pytest
import torch

from nas import Plan, PlanError, apply_plan, discover, shortcut_set
from search_spaces.shortcuts import SHORTCUT_KINDS, Shortcut, ShortcutSet, parse_shortcut_key

from tests.conftest import TINY_FAMILIES, make_tiny_model, randomize_, tiny_batch


def all_keys(layout):
    return [f"{i}.{k}" for i in range(layout.num_layers) for k in SHORTCUT_KINDS
            if not (k == "s_cut" and i == 0)]


def attach_all(model, rank=4):
    layout = discover(model)
    sset = ShortcutSet(model, layout, {k: {"rank": rank} for k in all_keys(layout)})
    return layout, sset


@torch.no_grad()
def out(model, batch):
    return model(**batch).logits


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_disabled_and_init_shortcuts_are_exact_no_ops(name):
    model, batch = make_tiny_model(name), tiny_batch()
    base = out(model, batch)
    layout, sset = attach_all(model)
    n = len(list(sset.items()))
    assert n == 4 * layout.num_layers - 1  # no s_cut in layer 0
    # attached + enabled at init (B = 0)
    assert all(sc.enabled for _, sc in sset.items())
    assert all(torch.count_nonzero(sc.lora_B) == 0 for _, sc in sset.items())
    assert (out(model, batch) - base).abs().max() <= 1e-6
    # attached but disabled, even with non-zero weights
    randomize_(sset.parameters(), std=0.3)
    for _, sc in sset.items():
        sc.enabled = False
    assert torch.equal(out(model, batch), base)
    assert not sset._captured  # activations are not kept alive after the forward


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_random_shortcuts_change_logits_and_get_gradients(name):
    model, batch = make_tiny_model(name), tiny_batch()
    base = out(model, batch)
    _, sset = attach_all(model)
    randomize_(sset.parameters(), std=0.3)
    y = model(**batch).logits
    assert (y.detach() - base).abs().max() > 1e-3
    y.square().sum().backward()
    for key, sc in sset.items():
        for pname, p in sc.named_parameters():
            assert p.grad is not None, f"{key}.{pname} has no gradient"
            assert p.grad.abs().sum() > 0, f"{key}.{pname} has a zero gradient"


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_remove_restores_base(name):
    model, batch = make_tiny_model(name), tiny_batch()
    base = out(model, batch)
    _, sset = attach_all(model)
    randomize_(sset.parameters(), std=0.3)
    assert not torch.allclose(out(model, batch), base)
    sset.remove()
    assert torch.equal(out(model, batch), base)


# ---- placement: each kind adds (alpha/r)·B A·source at its addition point ----------------
# Written from the HeteroLoRA paper and the HF layer code, independently of FamilySpec:
#   post-LN: (attention LayerNorm, feed-forward LayerNorm); the shortcut goes into their input.
#   pre-LN: the norm in front of the FFN, whose input is the residual stream after attention.
POST_LN = {"bert": ("attention.output.LayerNorm", "output.LayerNorm"),
           "roberta": ("attention.output.LayerNorm", "output.LayerNorm"),
           "mpnet": ("attention.LayerNorm", "output.LayerNorm"),
           "opt_post": ("self_attn_layer_norm", "final_layer_norm")}
PRE_LN = {"llama": "post_attention_layernorm", "opt": "final_layer_norm", "gpt2": "ln_2"}


def _first(t):
    return t[0] if isinstance(t, tuple) else t


def trace(model, layout):
    """Per layer: x_in (layer input), res_attn (residual stream after attention: post-LN the
    attention LayerNorm's output, pre-LN the FFN norm's input), ln_a_in / ln_f_in (post-LN
    LayerNorm inputs), out (layer output). All flattened to (tokens, d)."""
    rec, handles = {}, []
    layers = model.get_submodule(layout.layers_path)
    d = layout.hidden_size

    def put(key, t):
        rec[key] = _first(t).detach().reshape(-1, d).clone()

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(
            lambda m, a, k, i=i: put((i, "x_in"), a[0] if a else k["hidden_states"]),
            with_kwargs=True))
        handles.append(layer.register_forward_hook(lambda m, a, o, i=i: put((i, "out"), o)))
        if layout.family == "opt" and layout.spec.norm == "post" or layout.family in POST_LN:
            name = "opt_post" if layout.family == "opt" else layout.family
            ln_a, ln_f = (layer.get_submodule(n) for n in POST_LN[name])
            handles.append(ln_a.register_forward_pre_hook(lambda m, a, i=i: put((i, "ln_a_in"), a[0])))
            handles.append(ln_a.register_forward_hook(lambda m, a, o, i=i: put((i, "res_attn"), o)))
            handles.append(ln_f.register_forward_pre_hook(lambda m, a, i=i: put((i, "ln_f_in"), a[0])))
        else:
            norm = layer.get_submodule(PRE_LN[layout.family])
            handles.append(norm.register_forward_pre_hook(lambda m, a, i=i: put((i, "res_attn"), a[0])))
    return rec, handles


@pytest.mark.parametrize("kind", SHORTCUT_KINDS)
@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_shortcut_added_at_the_right_place(name, kind):
    model, batch = make_tiny_model(name), tiny_batch()
    layout = discover(model)
    L = layout.num_layers - 1
    rec, handles = trace(model, layout)
    with torch.no_grad():
        model(**batch)
    base = dict(rec)
    for h in handles:
        h.remove()

    sset = ShortcutSet(model, layout, {f"{L}.{kind}": {"rank": 4, "alpha": 4.0}})
    randomize_(sset.parameters(), std=0.3)
    rec, handles = trace(model, layout)  # registered after the shortcut hooks: sees their effect
    with torch.no_grad():
        model(**batch)
    new = dict(rec)
    sc = sset.get(L, kind)
    source = {"s_res1": base[(L, "x_in")], "s_in": base[(L, "x_in")],
              "s_res2": base[(L, "res_attn")], "s_cut": base[(L - 1, "res_attn")]}[kind]
    with torch.no_grad():
        extra = sc.scale * (source @ sc.lora_A.T) @ sc.lora_B.T
    assert extra.abs().max() > 1e-3
    layer = model.get_submodule(layout.layer_name(L))
    # Everything before layer L is untouched.
    for i in range(L):
        torch.testing.assert_close(new[(i, "out")], base[(i, "out")], rtol=0, atol=0)
    on_attn_side = kind in ("s_res1", "s_cut")
    if name in POST_LN:
        ln_a, ln_f = (layer.get_submodule(n) for n in POST_LN[name])
        with torch.no_grad():
            if on_attn_side:  # into the attention residual sum, before its LayerNorm
                expected = ln_a(base[(L, "ln_a_in")] + extra)
                torch.testing.assert_close(new[(L, "res_attn")], expected, rtol=1e-5, atol=1e-5)
            else:  # into the feed-forward residual sum, before its LayerNorm
                expected = ln_f(base[(L, "ln_f_in")] + extra)
                torch.testing.assert_close(new[(L, "out")], expected, rtol=1e-5, atol=1e-5)
    else:
        if on_attn_side:  # residual stream after attention
            torch.testing.assert_close(new[(L, "res_attn")], base[(L, "res_attn")] + extra,
                                       rtol=1e-5, atol=1e-5)
        else:  # residual stream after the FFN = the layer output
            torch.testing.assert_close(new[(L, "out")], base[(L, "out")] + extra,
                                       rtol=1e-5, atol=1e-5)
    for h in handles:
        h.remove()


# ---- through plans -------------------------------------------------------------------------

def test_s_cut_in_layer_zero_is_rejected_by_plan_validation():
    model = make_tiny_model("llama")
    layout = discover(model)
    plan = Plan(model={"name_or_path": "tiny"},
                shortcuts={"0.s_cut": {}, "1.s_cut": {}, "5.s_in": {}})
    with pytest.raises(PlanError) as e:
        plan.validate(layout)
    msg = str(e.value)
    assert "0.s_cut" in msg and "previous layer" in msg
    assert "5.s_in" in msg and "out of range" in msg
    assert "1.s_cut" not in msg
    assert len(e.value.problems) == 2
    with pytest.raises(PlanError):
        apply_plan(model, plan, layout)
    assert shortcut_set(model) is None  # nothing attached on failure


def test_plan_shortcuts_enabled_flag_and_removal():
    model, batch = make_tiny_model("bert"), tiny_batch()
    base = out(model, batch)
    plan = Plan(model={"name_or_path": "tiny"},
                shortcuts={"1.s_cut": {"rank": 2}, "0.s_res1": {"rank": 2, "enabled": False}})
    apply_plan(model, plan)
    sset = shortcut_set(model)
    assert sset.get(0, "s_res1").enabled is False and sset.get(1, "s_cut").enabled is True
    assert sset.get(1, "s_cut").hparams == {"rank": 2, "alpha": 4.0}
    assert torch.equal(out(model, batch), base)  # B = 0 at init
    randomize_(sset.get(1, "s_cut").parameters(), std=0.3)
    assert not torch.allclose(out(model, batch), base)
    randomize_(sset.get(1, "s_cut").parameters(), std=0.0)
    randomize_(sset.get(0, "s_res1").parameters(), std=0.3)  # disabled: still no effect
    assert torch.equal(out(model, batch), base)
    sset.remove()
    randomize_(sset.parameters(), std=0.3)
    assert torch.equal(out(model, batch), base)


def test_shortcut_module_and_keys():
    sc = Shortcut(16, rank=4, alpha=4.0)
    assert sc.scale == 1.0 and sc.lora_A.shape == (4, 16) and sc.lora_B.shape == (16, 4)
    assert ShortcutSet.count(16, {"1.s_in": {}, "2.s_cut": {"rank": 2}}) == 2 * 8 * 16 + 2 * 2 * 16
    assert parse_shortcut_key("3.s_res2") == (3, "s_res2")
    for bad in ("s_in", "x.s_in", "1.s_bogus", "1"):
        with pytest.raises(ValueError):
            parse_shortcut_key(bad)
    with pytest.raises(ValueError):
        Shortcut(16, rank=0)
    model = make_tiny_model("gpt2")
    layout = discover(model)
    sset = ShortcutSet(model, layout, {"1.s_in": {}, "2.s_cut": {"rank": 2}})
    assert sum(p.numel() for p in sset.parameters()) == ShortcutSet.count(
        layout.hidden_size, {"1.s_in": {}, "2.s_cut": {"rank": 2}})


def test_shortcut_at_an_adapted_site_survives_merge():
    """OPT pre-LN adds the FFN-side shortcuts at fc2's output, and fc2 may carry an adapter:
    merging (which unwraps the adapter) must keep the shortcut in place."""
    from nas import merge_plan

    model, batch = make_tiny_model("opt"), tiny_batch()
    layout = discover(model)
    fc2 = f"{layout.layers_path}.1.fc2"
    plan = Plan(model={"name_or_path": "tiny"}, modules={fc2: {"type": "lora", "rank": 2}},
                shortcuts={"1.s_in": {"rank": 2}, "1.s_res2": {"rank": 2}})
    apply_plan(model, plan, layout)
    randomize_([p for n, p in model.named_parameters() if p.requires_grad
                and not n.startswith("score")], std=0.2)
    with torch.no_grad():
        before = out(model, batch)
        shortcut_set(model).get(1, "s_in").enabled = False
        without_s_in = out(model, batch)
        shortcut_set(model).get(1, "s_in").enabled = True
    assert (before - without_s_in).abs().max() > 1e-4  # the shortcut does matter
    merge_plan(model)
    torch.testing.assert_close(out(model, batch), before, rtol=1e-5, atol=1e-6)
