"""HeteroLoRA shortcuts (Zhang et al., "Unlocking the Global Synergies in Low-Rank Adapters", arXiv 2406.14956) as trainable low-rank paths attached by hooks.

Each layer i has two addition points and two captured values:
  A1 = end of the attention block, A2 = end of the feed-forward block (in the residual stream);
  x_in = the layer's input, f_in = the residual stream entering the feed-forward block.
    s_res1: A1 += BA x_in        ((I + BA) on the attention residual)
    s_res2: A2 += BA f_in        ((I + BA) on the feed-forward residual)
    s_in:   A2 += BA x_in        (same-layer: layer input to after the FFN)
    s_cut:  A1 += BA f_in[i-1]   (cut-layer: previous layer's FFN input; absent in layer 0)

Where A1/A2 are, per family (FamilySpec in search_spaces/anatomy.py):
  post-LN (BERT, RoBERTa, MPNet, OPT-350m): a forward pre-hook on the LayerNorm that closes the
    block adds to its input, i.e. into ``LN(sublayer(h) + h + BA·)``; f_in is the output of the
    attention LayerNorm.
  pre-LN (Llama, OPT, GPT-2): a forward hook on the attention / MLP module adds to its output,
    right before the residual add ``h + sublayer(LN(h)) + BA·``; f_in is the input of the
    post-attention norm.
A disabled shortcut adds nothing, so with all of them off the model is exactly the base model.
"""
from __future__ import annotations

import torch
from torch import nn

from .anatomy import ModelLayout
from .base import Adapter, kaiming_uniform_

SHORTCUT_KINDS = ("s_res1", "s_res2", "s_in", "s_cut")
SHORTCUT_DEFAULTS = {"rank": 8, "alpha": 4.0}


def shortcut_key(layer: int, kind: str) -> str:
    return f"{layer}.{kind}"


def parse_shortcut_key(key: str) -> tuple[int, str]:
    layer, _, kind = key.partition(".")
    if not layer.isdigit() or kind not in SHORTCUT_KINDS:
        raise ValueError(
            f"bad shortcut key {key!r}: expected '<layer>.<kind>' with kind in {SHORTCUT_KINDS}"
        )
    return int(layer), kind


def shortcut_params(dim: int, rank: int, **_) -> int:
    return 2 * rank * dim


class Shortcut(nn.Module):
    """A low-rank d -> d path ``(alpha / r) · B A h``; A Kaiming, B zero."""

    def __init__(self, dim: int, rank: int = 8, alpha: float = 4.0, dtype=None, device=None):
        super().__init__()
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"shortcut rank must be a positive integer, got {rank!r}")
        self.hparams = {"rank": rank, "alpha": float(alpha)}
        self.scale = float(alpha) / rank
        self.lora_A = nn.Parameter(torch.empty(rank, dim, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(dim, rank, dtype=dtype, device=device))
        kaiming_uniform_(self.lora_A, dim)
        self.enabled = True

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * ((h.to(self.lora_A.dtype) @ self.lora_A.T) @ self.lora_B.T).to(h.dtype)


def _unwrap(mod: nn.Module) -> nn.Module:
    return mod.base if isinstance(mod, Adapter) else mod


def _add_to_first(out, extra):
    if isinstance(out, tuple):
        return (out[0] + extra,) + out[1:]
    return out + extra


class ShortcutSet(nn.Module):
    """All shortcuts of one model and the hooks that wire them in; ``remove()`` undoes it."""

    def __init__(self, model: nn.Module, layout: ModelLayout, choices: dict[str, dict]):
        super().__init__()
        if not layout.supports_shortcuts:
            raise ValueError(f"shortcuts are not available for family {layout.family!r}")
        ref = next(model.parameters())
        self.paths = nn.ModuleDict()
        for key, hp in choices.items():
            layer, kind = parse_shortcut_key(key)
            # ModuleDict keys may not contain '.', so store under "<layer>_<kind>".
            self.paths[f"{layer}_{kind}"] = Shortcut(
                layout.hidden_size, **{**SHORTCUT_DEFAULTS, **hp}, dtype=ref.dtype, device=ref.device
            )
        self._layout = layout
        self._captured: dict[tuple[int, str], torch.Tensor] = {}
        self._handles = []
        self._install(model)

    def get(self, layer: int, kind: str) -> Shortcut | None:
        return self.paths[f"{layer}_{kind}"] if f"{layer}_{kind}" in self.paths else None

    def items(self):
        for k, sc in self.paths.items():
            layer, _, kind = k.partition("_")
            yield shortcut_key(int(layer), kind), sc

    def _term(self, layer: int, kind: str, source: torch.Tensor | None):
        sc = self.get(layer, kind)
        if sc is None or not sc.enabled or source is None:
            return None
        return sc(source)

    def _sum_terms(self, layer: int, at: str, like: torch.Tensor):
        cap = self._captured
        if at == "attn":
            terms = [self._term(layer, "s_res1", cap.get((layer, "x_in"))),
                     self._term(layer, "s_cut", cap.get((layer - 1, "f_in")))]
        else:
            terms = [self._term(layer, "s_res2", cap.get((layer, "f_in"))),
                     self._term(layer, "s_in", cap.get((layer, "x_in")))]
        # Some layers flatten tokens around the FFN (OPT: (B*T, d) inside, (B, T, d) outside),
        # so a term computed from a value captured on the other side is reshaped to the target.
        terms = [t if t.shape == like.shape else t.reshape(like.shape) for t in terms if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def _install(self, model: nn.Module) -> None:
        spec, layout = self._layout.spec, self._layout
        layers = model.get_submodule(layout.layers_path)
        post = spec.norm == "post"
        for i, layer in enumerate(layers):
            def capture_x(mod, args, kwargs, i=i):
                self._captured[(i, "x_in")] = args[0] if args else kwargs["hidden_states"]

            def capture_f_post(mod, args, out, i=i):
                self._captured[(i, "f_in")] = out

            def capture_f_pre(mod, args, i=i):
                self._captured[(i, "f_in")] = args[0]

            def add_pre(at, i=i):
                def hook(mod, args):
                    extra = self._sum_terms(i, at, args[0])
                    return None if extra is None else (args[0] + extra,) + args[1:]
                return hook

            def add_post(at, i=i):
                def hook(mod, args, out):
                    extra = self._sum_terms(i, at, out[0] if isinstance(out, tuple) else out)
                    return None if extra is None else _add_to_first(out, extra)
                return hook

            h = self._handles
            h.append(layer.register_forward_pre_hook(capture_x, with_kwargs=True))
            f_mod = layer.get_submodule(spec.ffn_input)
            attn_site, ffn_site = layer.get_submodule(spec.attn_site), layer.get_submodule(spec.ffn_site)
            # A site can be an adapted projection (OPT pre-LN: fc2).  Hook its frozen base layer,
            # not the adapter: the base layer stays when merge_plan unwraps the adapter, and
            # base(x) + extra + delta(x) is the same sum.
            attn_site, ffn_site = _unwrap(attn_site), _unwrap(ffn_site)
            if post:
                # Order matters on the attention LayerNorm: add to its input first, then
                # capture its (shortcut-including) output as the FFN input.
                h.append(attn_site.register_forward_pre_hook(add_pre("attn")))
                h.append(f_mod.register_forward_hook(capture_f_post))
                h.append(ffn_site.register_forward_pre_hook(add_pre("ffn")))
            else:
                h.append(f_mod.register_forward_pre_hook(capture_f_pre))
                h.append(attn_site.register_forward_hook(add_post("attn")))
                h.append(ffn_site.register_forward_hook(add_post("ffn")))
        # Captured values belong to one forward: drop stale ones before it, and after it drop
        # them so they are not kept alive -- unless the layers are gradient-checkpointed.  HF
        # checkpoints a layer's ``forward`` (its hooks, where x_in is captured, stay outside),
        # and the backward recomputation of layer i reads x_in[i] and f_in[i-1] again: they
        # must still be there, or the recomputed graph differs (torch CheckpointError).
        h.append(model.register_forward_pre_hook(lambda *a: self._captured.clear()))
        h.append(model.register_forward_hook(lambda *a: self._release(layers)))

    def _release(self, layers) -> None:
        recompute = torch.is_grad_enabled() and any(
            getattr(m, "gradient_checkpointing", False) and m.training for m in layers)
        if not recompute:
            self._captured.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._captured.clear()

    @staticmethod
    def count(dim: int, choices: dict[str, dict]) -> int:
        return sum(shortcut_params(dim, **{**SHORTCUT_DEFAULTS, **hp}) for hp in choices.values())


