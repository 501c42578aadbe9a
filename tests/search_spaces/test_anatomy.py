"""Model discovery: the right projections and roles per layer for each known family, and a
warned fall-back to "every linear in the blocks" for anything else."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nas import discover
from search_spaces.anatomy import find_layers
from search_spaces.base import base_shape

from tests.conftest import HIDDEN, make_tiny_model

H, FF = HIDDEN, 48

EXPECTED = {
    # family: (layers_path, num_layers, {role: (relative name, d_in, d_out)}, norm)
    "bert": ("bert.encoder.layer", 2, {
        "q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
        "v": ("attention.self.value", H, H), "o": ("attention.output.dense", H, H),
        "ffn_up": ("intermediate.dense", H, FF), "ffn_down": ("output.dense", FF, H)}, "post"),
    "roberta": ("roberta.encoder.layer", 2, {
        "q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
        "v": ("attention.self.value", H, H), "o": ("attention.output.dense", H, H),
        "ffn_up": ("intermediate.dense", H, FF), "ffn_down": ("output.dense", FF, H)}, "post"),
    "mpnet": ("mpnet.encoder.layer", 2, {
        "q": ("attention.attn.q", H, H), "k": ("attention.attn.k", H, H),
        "v": ("attention.attn.v", H, H), "o": ("attention.attn.o", H, H),
        "ffn_up": ("intermediate.dense", H, FF), "ffn_down": ("output.dense", FF, H)}, "post"),
    # Llama with grouped-query attention: 1 KV head of size 16.
    "llama": ("model.layers", 2, {
        "q": ("self_attn.q_proj", H, H), "k": ("self_attn.k_proj", H, 16),
        "v": ("self_attn.v_proj", H, 16), "o": ("self_attn.o_proj", H, H),
        "gate": ("mlp.gate_proj", H, FF), "ffn_up": ("mlp.up_proj", H, FF),
        "ffn_down": ("mlp.down_proj", FF, H)}, "pre"),
    "opt": ("model.decoder.layers", 2, {
        "q": ("self_attn.q_proj", H, H), "k": ("self_attn.k_proj", H, H),
        "v": ("self_attn.v_proj", H, H), "o": ("self_attn.out_proj", H, H),
        "ffn_up": ("fc1", H, FF), "ffn_down": ("fc2", FF, H)}, "pre"),
    "opt_post": ("model.decoder.layers", 2, {
        "q": ("self_attn.q_proj", H, H), "k": ("self_attn.k_proj", H, H),
        "v": ("self_attn.v_proj", H, H), "o": ("self_attn.out_proj", H, H),
        "ffn_up": ("fc1", H, FF), "ffn_down": ("fc2", FF, H)}, "post"),
    # GPT-2: fused qkv Conv1D (d -> 3d), 4d MLP.
    "gpt2": ("transformer.h", 3, {
        "qkv": ("attn.c_attn", H, 3 * H), "o": ("attn.c_proj", H, H),
        "ffn_up": ("mlp.c_fc", H, 4 * H), "ffn_down": ("mlp.c_proj", 4 * H, H)}, "pre"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_known_family_roles_per_layer(name):
    model = make_tiny_model(name)
    path, n_layers, roles, norm = EXPECTED[name]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known family must not warn
        layout = discover(model)
    assert layout.layers_path == path
    assert layout.num_layers == n_layers
    assert layout.hidden_size == H
    assert layout.supports_shortcuts and layout.spec.norm == norm
    assert layout.family == model.config.model_type
    assert len(layout.modules) == n_layers * len(roles)
    for i in range(n_layers):
        in_layer = {m.role: m for m in layout.modules if m.layer == i}
        assert set(in_layer) == set(roles), f"layer {i}: {sorted(in_layer)}"
        for role, (rel, d_in, d_out) in roles.items():
            m = in_layer[role]
            assert m.name == f"{path}.{i}.{rel}"
            assert (m.d_in, m.d_out) == (d_in, d_out)
            sub = model.get_submodule(m.name)
            assert base_shape(sub) == (d_in, d_out)
            assert layout.module(m.name) is m
    assert layout.roles == [r for r in ("q", "k", "v", "qkv", "o", "gate", "ffn_up", "ffn_down")
                            if r in roles]
    # The task head and embeddings are never adaptable.
    assert not any("classifier" in m.name or "score" in m.name or "embed" in m.name
                   for m in layout.modules)


def test_gpt2_projections_are_conv1d_with_transposed_weights():
    from transformers.pytorch_utils import Conv1D

    model = make_tiny_model("gpt2")
    layout = discover(model)
    for m in layout.modules:
        sub = model.get_submodule(m.name)
        assert isinstance(sub, Conv1D)
        assert tuple(sub.weight.shape) == (m.d_in, m.d_out)  # Conv1D stores (d_in, d_out)
    qkv = [m for m in layout.modules if m.role == "qkv"]
    assert len(qkv) == 3 and all((m.d_in, m.d_out) == (H, 3 * H) for m in qkv)


def test_opt_pre_and_post_ln_get_different_specs():
    pre, post = discover(make_tiny_model("opt")), discover(make_tiny_model("opt_post"))
    assert pre.spec.norm == "pre" and post.spec.norm == "post"
    assert pre.spec.attn_site == "self_attn" and post.spec.attn_site == "self_attn_layer_norm"


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.mix = nn.Linear(d, d)
        self.inner = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x + self.inner(self.mix(x)))


class _Config:
    model_type = "my_custom_arch"
    hidden_size = 24


class CustomModel(nn.Module):
    """Not a transformers model: a config, embeddings, a ModuleList of blocks and a head."""

    def __init__(self, d=24, n=3):
        super().__init__()
        self.config = _Config()
        self.embed = nn.Embedding(10, d)
        self.blocks = nn.ModuleList([_Block(d) for _ in range(n)])
        self.small = nn.ModuleList([nn.Linear(d, d)])  # a lighter ModuleList: not the layers
        self.head = nn.Linear(d, 2)

    def forward(self, ids):
        h = self.embed(ids)
        for b in self.blocks:
            h = b(h)
        return self.head(h.mean(1))


def test_unknown_architecture_falls_back_with_warning():
    model = CustomModel()
    with pytest.warns(UserWarning, match="unknown architecture 'my_custom_arch'"):
        layout = discover(model)
    assert layout.layers_path == "blocks" and layout.num_layers == 3
    assert layout.hidden_size == 24
    assert not layout.supports_shortcuts and layout.spec is None
    expected = {"mix": (24, 24), "inner.0": (24, 48), "inner.2": (48, 24)}
    assert len(layout.modules) == 3 * len(expected)
    for i in range(3):
        got = {m.role: (m.d_in, m.d_out) for m in layout.modules if m.layer == i}
        assert got == expected
    assert all(m.name.startswith("blocks.") for m in layout.modules)  # not head / small
    # The fallback layout is usable: a plan on it applies and changes the model.
    from nas import Plan, apply_plan

    plan = Plan(model={"name_or_path": "custom"},
                modules={"blocks.1.inner.0": {"type": "lora", "rank": 2},
                         "blocks.2.mix": {"type": "more", "nblocks": 4, "rank": 2}})
    ids = torch.randint(0, 10, (2, 5))
    base = model(ids)
    apply_plan(model, plan, layout)
    assert torch.equal(model(ids), base)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "blocks.1.inner.0.lora_A", "blocks.1.inner.0.lora_B",
        "blocks.2.mix.blkdiag1", "blocks.2.mix.blkdiag2"}


def test_unknown_transformers_model_type_falls_back():
    import transformers as T

    cfg = T.DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=48,
                             max_position_embeddings=64, num_labels=2)
    model = T.AutoModelForSequenceClassification.from_config(cfg)
    with pytest.warns(UserWarning, match="distilbert"):
        layout = discover(model)
    assert layout.layers_path == "distilbert.transformer.layer"
    assert layout.family == "distilbert" and not layout.supports_shortcuts
    roles = {m.role: (m.d_in, m.d_out) for m in layout.modules if m.layer == 1}
    assert roles == {"attention.q_lin": (32, 32), "attention.k_lin": (32, 32),
                     "attention.v_lin": (32, 32), "attention.out_lin": (32, 32),
                     "ffn.lin1": (32, 48), "ffn.lin2": (48, 32)}
    # No shortcuts for an unknown family.
    from search_spaces.shortcuts import ShortcutSet

    with pytest.raises(ValueError, match="not available"):
        ShortcutSet(model, layout, {"1.s_in": {}})


def test_find_layers_rejects_models_without_blocks():
    with pytest.raises(ValueError, match="no repeated layer blocks"):
        find_layers(nn.Sequential(nn.Linear(3, 3)))
