"""Model anatomy: the adaptable projections of any HF model, per layer, with a role.

Known families are described by a small table (``FAMILIES``): which projection plays which
role and where the HeteroLoRA shortcuts attach.  Anything else falls back to "every linear
layer inside the repeated blocks" (with a warning) and gets no shortcuts.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from torch import nn

from .base import base_shape

# Task heads that stay trainable (as PEFT's SEQ_CLS modules_to_save); LM heads stay frozen.
HEAD_NAMES = ("classifier", "score", "qa_outputs")
ROLES = ("q", "k", "v", "qkv", "o", "gate", "ffn_up", "ffn_down")


@dataclass(frozen=True)
class FamilySpec:
    """How one architecture family is laid out, relative to one repeated layer.

    Shortcut sites (see search_spaces/shortcuts.py for how they are used):
      post-LN (BERT-like): ``attn_site`` / ``ffn_site`` are the LayerNorms that close the
        attention / feed-forward blocks; a shortcut is added to their *input*, i.e. into the
        residual sum, and ``ffn_input`` is the attention LayerNorm whose *output* feeds the FFN.
      pre-LN (Llama-like): ``attn_site`` / ``ffn_site`` are the attention / MLP modules; a
        shortcut is added to their *output*, right before the residual add, and ``ffn_input``
        is the post-attention norm whose *input* is the residual stream entering the FFN block.
    """

    roles: dict[str, str]
    norm: str  # "post" or "pre"
    attn_site: str
    ffn_site: str
    ffn_input: str


_BERT = FamilySpec(
    roles={
        "attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
        "attention.output.dense": "o", "intermediate.dense": "ffn_up", "output.dense": "ffn_down",
    },
    norm="post", attn_site="attention.output.LayerNorm", ffn_site="output.LayerNorm",
    ffn_input="attention.output.LayerNorm",
)
_MPNET = FamilySpec(
    roles={
        "attention.attn.q": "q", "attention.attn.k": "k", "attention.attn.v": "v",
        "attention.attn.o": "o", "intermediate.dense": "ffn_up", "output.dense": "ffn_down",
    },
    norm="post", attn_site="attention.LayerNorm", ffn_site="output.LayerNorm",
    ffn_input="attention.LayerNorm",
)
_LLAMA = FamilySpec(
    roles={
        "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v",
        "self_attn.o_proj": "o", "mlp.gate_proj": "gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    },
    norm="pre", attn_site="self_attn", ffn_site="mlp", ffn_input="post_attention_layernorm",
)
_OPT_ROLES = {
    "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v",
    "self_attn.out_proj": "o", "fc1": "ffn_up", "fc2": "ffn_down",
}
# OPT-350m is post-LN (do_layer_norm_before=False); the other OPT sizes are pre-LN.
_OPT_PRE = FamilySpec(roles=_OPT_ROLES, norm="pre", attn_site="self_attn", ffn_site="fc2",
                      ffn_input="final_layer_norm")
_OPT_POST = FamilySpec(roles=_OPT_ROLES, norm="post", attn_site="self_attn_layer_norm",
                       ffn_site="final_layer_norm", ffn_input="self_attn_layer_norm")
_GPT2 = FamilySpec(
    roles={"attn.c_attn": "qkv", "attn.c_proj": "o", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"},
    norm="pre", attn_site="attn", ffn_site="mlp", ffn_input="ln_2",
)

FAMILIES: dict[str, FamilySpec] = {
    "bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT, "camembert": _BERT, "electra": _BERT,
    "mpnet": _MPNET,
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA,
    "opt": _OPT_PRE,
    "gpt2": _GPT2,
}


def family_spec(config) -> FamilySpec | None:
    model_type = getattr(config, "model_type", None)
    if model_type == "opt" and not getattr(config, "do_layer_norm_before", True):
        return _OPT_POST
    return FAMILIES.get(model_type)


@dataclass(frozen=True)
class AdaptableModule:
    name: str  # qualified name in the model, e.g. "bert.encoder.layer.0.attention.self.query"
    layer: int
    role: str
    d_in: int
    d_out: int


@dataclass
class ModelLayout:
    family: str
    layers_path: str
    num_layers: int
    hidden_size: int
    modules: list[AdaptableModule]
    spec: FamilySpec | None = None  # None: unknown family, no shortcuts
    _by_name: dict[str, AdaptableModule] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._by_name = {m.name: m for m in self.modules}

    def module(self, name: str) -> AdaptableModule | None:
        return self._by_name.get(name)

    @property
    def roles(self) -> list[str]:
        return sorted({m.role for m in self.modules}, key=lambda r: (ROLES + (r,)).index(r))

    @property
    def supports_shortcuts(self) -> bool:
        return self.spec is not None

    def layer_name(self, i: int) -> str:
        return f"{self.layers_path}.{i}"


def _is_projection(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (type(m).__name__ == "Conv1D" and hasattr(m, "nf"))


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The repeated blocks: the ModuleList of same-typed children holding the most parameters."""
    best, best_size = None, -1
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            if len({type(c) for c in mod}) != 1:
                continue
            size = sum(p.numel() for p in mod.parameters())
            if size > best_size:
                best, best_size = (name, mod), size
    if best is None:
        raise ValueError(f"{type(model).__name__}: found no repeated layer blocks to adapt")
    return best


def discover(model: nn.Module) -> ModelLayout:
    """List the adaptable projections of ``model`` per layer, with their roles."""
    config = getattr(model, "config", None)
    spec = family_spec(config) if config is not None else None
    layers_path, layers = find_layers(model)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    modules = []
    for i, layer in enumerate(layers):
        for rel, sub in layer.named_modules():
            if not rel or not _is_projection(sub):
                continue
            if spec is not None:
                role = spec.roles.get(rel)
                if role is None:
                    continue
            else:
                role = rel  # unknown family: the relative name is the role
            d_in, d_out = base_shape(sub)
            modules.append(AdaptableModule(f"{layers_path}.{i}.{rel}", i, role, d_in, d_out))
    if spec is None:
        model_type = getattr(config, "model_type", type(model).__name__)
        warnings.warn(
            f"unknown architecture {model_type!r}: adapting every linear layer inside "
            f"'{layers_path}' with its relative name as role; shortcuts are unavailable",
            stacklevel=2,
        )
    if spec is not None and not modules:
        raise ValueError(f"{type(model).__name__}: no projections matched the family table")
    if hidden is None:
        hidden = modules[0].d_in
    family = getattr(config, "model_type", "unknown") if config is not None else "unknown"
    return ModelLayout(family, layers_path, len(layers), hidden, modules, spec)


def task_head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the model's task head (the children named in ``HEAD_NAMES``)."""
    return [p for name, child in model.named_children() if name in HEAD_NAMES for p in child.parameters()]


def head_param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in task_head_parameters(model))


def base_param_count(model: nn.Module) -> int:
    """Parameters of the base model, the task head excluded (tied weights counted once)."""
    head = {id(p) for p in task_head_parameters(model)}
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in head and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
