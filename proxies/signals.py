"""Joint scoring: every candidate's proxy signal from a few passes over the whole model.

Why one backward is enough.  Every candidate adds ``ΔW(θ) x`` to a module's output (a
shortcut adds ``ΔW(θ) h`` at its site).  At a point where that contribution is zero in value
but differentiable (the scoring point), the chain rule gives

    dL/dθ = J(θ)^T vec(G),     G = dL/dW = Σ_t (dL/dy_t) x_t^T,

where ``G`` is the gradient of the module's (frozen) base weight and ``J = dΔW/dθ``.  ``G``
depends only on the module's input and output gradient, which every candidate of the module
shares, so one forward/backward per batch with the base weights (and a zero d x d probe per
shortcut site) requiring grad yields every ``G``; each candidate's gradient is then
``grad_θ <G, ΔW(θ)>`` on its dense ΔW, without touching the model again.  This is exact for
first-order proxies and equal to attaching the candidate alone (``one_at_a_time_signal``,
in proxies/check.py, does exactly that with the real adapter attached and a compensated base
weight; the tests check joint == one-at-a-time).

Because no candidate changes the forward value, candidates cannot interfere with each other
and the model is scored at its own weights (also with a plan already applied: then G is the
gradient of the wrapped base weight, the same as that of the effective weight).

Nothing stays in the model: requires_grad flags, train/eval modes and (for SynFlow) the
weight values are restored, probe hooks removed.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any, Callable, Iterable

import torch
from torch import nn

from search_spaces import Adapter, make_adapter
from search_spaces.anatomy import ModelLayout
from search_spaces.attach import split_choice
from search_spaces.base import is_conv1d, kaiming_uniform_
from search_spaces.shortcuts import SHORTCUT_DEFAULTS, Shortcut, ShortcutSet, parse_shortcut_key

from .base import CandidateSignal, Proxy

LossFn = Callable[[nn.Module, dict], torch.Tensor]


# ---- small helpers --------------------------------------------------------------------------
def compute_dtype(model: nn.Module) -> torch.dtype:
    """float64 for float64 models, float32 otherwise (half models are scored in float32)."""
    dt = next(model.parameters()).dtype
    return torch.float64 if dt == torch.float64 else torch.float32


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def candidate_seed(seed: int, key: str) -> int:
    """A per-candidate seed that depends on the run seed and the candidate, not on order."""
    return (int(seed) * 1_000_003 + zlib.crc32(key.encode())) % (2**31 - 1)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def default_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    out = model(**batch)
    loss = getattr(out, "loss", None)
    if loss is None:
        raise ValueError(
            "model(**batch) returned no loss: include 'labels' in every scoring batch "
            "or pass loss_fn(model, batch) -> scalar tensor"
        )
    return loss


def base_weight(model: nn.Module, name: str) -> tuple[nn.Module, nn.Parameter]:
    """The projection named ``name`` (unwrapping an already attached adapter) and its weight."""
    mod = model.get_submodule(name)
    if isinstance(mod, Adapter):
        mod = mod.base
    return mod, mod.weight


def weight_grad_as_dw(mod: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """A weight gradient in ΔW's (d_out, d_in) orientation (GPT-2's Conv1D stores it transposed)."""
    return g.T if is_conv1d(mod) else g


@contextmanager
def preserved(model: nn.Module, restore_values: bool = False):
    """Restore requires_grad flags, train/eval modes (and optionally all values) on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    saved = None
    if restore_values:
        saved = [(p, p.detach().clone()) for p in model.parameters()]
    try:
        yield
    finally:
        if saved is not None:
            with torch.no_grad():
                for p, v in saved:
                    p.copy_(v)
        for p, f in flags:
            p.requires_grad_(f)
        for m, t in modes:
            m.training = t


# ---- the scoring-init module of a candidate ---------------------------------------------------
def scoring_module(cand, layout: ModelLayout, *, seed: int = 0, dtype=torch.float32,
                   device=None) -> nn.Module:
    """A fresh adapter (or shortcut path) for ``cand`` at the scoring init.

    The adapter's own init for its non-zero factor, and for every tensor its init leaves at
    zero (LoRA's B, MoRe's blkdiag2, SURM's c / b / B) seeded Kaiming-uniform values with
    that tensor's fan-in (last dimension), so no product of factors is identically zero.
    Built on a throw-away base layer; the global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would also (lazily) seed every accelerator
        torch.random.default_generator.manual_seed(candidate_seed(seed, cand.key))
        if cand.is_shortcut:
            hp = {k: v for k, v in cand.choice_dict.items() if k not in ("type", "enabled")}
            mod = Shortcut(layout.hidden_size, **{**SHORTCUT_DEFAULTS, **hp}, dtype=dtype)
        else:
            info = layout.module(cand.target)
            if info is None:
                raise ValueError(f"candidate {cand.key!r}: {cand.target!r} is not a module of this model")
            base = nn.utils.skip_init(nn.Linear, info.d_in, info.d_out, bias=False, dtype=dtype)
            kind, hp = split_choice(cand.choice_dict)
            mod = make_adapter(kind, base, **hp)
        for p in mod.parameters(recurse=False):
            if not bool(p.detach().any()):
                kaiming_uniform_(p, p.shape[-1])
    if device is not None and torch.device(device) != torch.device("cpu"):
        mod = mod.to(device)
    return mod


def module_params(mod: nn.Module) -> list[nn.Parameter]:
    return list(mod.parameters(recurse=False))


def dense_dw(mod: nn.Module) -> torch.Tensor:
    """Dense scaled ΔW (d_out, d_in) of an adapter or a shortcut path (differentiable)."""
    if isinstance(mod, Shortcut):
        return mod.scale * (mod.lora_B @ mod.lora_A)
    return mod.delta_weight()


# ---- joint gradient collection ----------------------------------------------------------------
class Probe(nn.Module):
    """A zero d x d path at a shortcut site: adds nothing, its gradient is the site's G."""

    def __init__(self, dim: int, dtype, device):
        super().__init__()
        self.P = nn.Parameter(torch.zeros(dim, dim, dtype=dtype, device=device))
        self.enabled = True

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h.to(self.P.dtype) @ self.P.T).to(h.dtype)


def _attach_probes(model: nn.Module, layout: ModelLayout, keys: Iterable[str]) -> tuple[ShortcutSet, dict]:
    keys = list(keys)
    ref = next(model.parameters())
    with torch.random.fork_rng(devices=[]):  # ShortcutSet builds (unused) Kaiming paths
        sset = ShortcutSet(model, layout, {k: {} for k in keys})
    probes = {}
    for k in keys:
        layer, kind = parse_shortcut_key(k)
        probe = Probe(layout.hidden_size, ref.dtype, ref.device)
        sset.paths[f"{layer}_{kind}"] = probe
        probes[k] = probe
    return sset, probes


def synflow_inputs(batches: list[dict], device) -> dict:
    """SynFlow's all-ones input: token id 1 everywhere, full attention, one sequence."""
    b = batches[0]
    if "input_ids" in b:
        seq = b["input_ids"].shape[-1]
    elif "inputs_embeds" in b:
        seq = b["inputs_embeds"].shape[-2]
    else:
        raise ValueError("synflow needs batches with input_ids to know the sequence length")
    ones = torch.ones(1, seq, dtype=torch.long, device=device)
    return {"input_ids": ones, "attention_mask": ones}


def synflow_objective(model: nn.Module, inputs: dict) -> torch.Tensor:
    out = model(**inputs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits.float().sum() if logits.dtype in (torch.float16, torch.bfloat16) else logits.sum()


@contextmanager
def absolute_weights(model: nn.Module):
    """SynFlow's linearisation: every parameter replaced by its absolute value, then restored."""
    saved = [(p, p.detach().clone()) for p in model.parameters()]
    with torch.no_grad():
        for p, _ in saved:
            p.abs_()
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in saved:
                p.copy_(v)


def collect_gradients(model: nn.Module, layout: ModelLayout, module_names: Iterable[str],
                      shortcut_keys: Iterable[str], batches: list[dict], *,
                      loss_fn: LossFn | None = None, signal: str = "data",
                      keep_batches: bool = False):
    """G for every named module and shortcut site: one forward/backward per batch, all at once.

    Returns (mean G over batches, per-batch G's or None); both dicts keyed by module name or
    shortcut key, tensors in the scoring dtype, (d_out, d_in) orientation.
    """
    module_names, shortcut_keys = list(dict.fromkeys(module_names)), list(dict.fromkeys(shortcut_keys))
    dtype, device = compute_dtype(model), model_device(model)
    loss_fn = loss_fn or default_loss
    sums: dict[str, torch.Tensor] = {}
    per_batch: list[dict[str, torch.Tensor]] | None = [] if keep_batches else None
    sset = None
    with preserved(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        mods = {n: base_weight(model, n) for n in module_names}
        for _, w in mods.values():
            w.requires_grad_(True)
        try:
            probes = {}
            if shortcut_keys:
                sset, probes = _attach_probes(model, layout, shortcut_keys)
            names = list(mods) + list(probes)
            params = [mods[n][1] for n in mods] + [probes[k].P for k in probes]
            if signal == "synflow":
                passes = [synflow_inputs(batches, device)]
            elif signal == "data":
                passes = [to_device(b, device) for b in batches]
            else:
                raise ValueError(f"unknown signal {signal!r}; expected 'data' or 'synflow'")
            ctx = absolute_weights(model) if signal == "synflow" else nullcontext()
            with ctx:
                for inp in passes:
                    with torch.enable_grad():
                        obj = synflow_objective(model, inp) if signal == "synflow" else loss_fn(model, inp)
                        grads = torch.autograd.grad(obj, params, allow_unused=True)
                    cur = {}
                    for n, g in zip(names, grads):
                        if g is None:
                            g = torch.zeros_like(params[names.index(n)])
                        g = g.detach().to(dtype)
                        if n in mods:
                            g = weight_grad_as_dw(mods[n][0], g)
                        cur[n] = g
                        sums[n] = sums[n] + g if n in sums else g.clone()
                    if per_batch is not None:
                        per_batch.append(cur)
        finally:
            if sset is not None:
                sset.remove()
    n = len(passes)
    return {k: v / n for k, v in sums.items()}, per_batch



# ---- per-candidate signals -----------------------------------------------------------------
def _fill_param_signal(sig: CandidateSignal, mod: nn.Module, G: torch.Tensor, signal: str,
                       batch_G: list[torch.Tensor] | None) -> None:
    theta = module_params(mod)
    if signal == "synflow":
        with torch.no_grad():
            for p in theta:
                p.abs_()
    with torch.enable_grad():
        dw = dense_dw(mod)
        grads = torch.autograd.grad((G * dw).sum(), theta, allow_unused=True)
    sig.theta = [p.detach() for p in theta]
    sig.grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(theta, grads)]
    sig.dw = dw.detach()
    if batch_G is not None:
        sig.channel_dots = [(Gb * sig.dw).sum(1) for Gb in batch_G]


def joint_signals(candidates: list, layout: ModelLayout, G: dict[str, torch.Tensor],
                  batch_G: list[dict] | None, proxy: Proxy, *, seed: int = 0):
    """Yield a CandidateSignal per candidate from the collected G's (no model pass)."""
    caches: dict[str, dict] = {}
    for c in candidates:
        Gc = G[c.target]
        build = partial(scoring_module, c, layout, seed=seed, dtype=Gc.dtype, device=Gc.device)
        sig = CandidateSignal(candidate=c, G=Gc, build=build, cache=caches.setdefault(c.target, {}))
        if proxy.needs & {"param_grads", "channel_dots"}:
            bg = [b[c.target] for b in batch_G] if "channel_dots" in proxy.needs else None
            _fill_param_signal(sig, build(), Gc, proxy.signal, bg)
        yield sig


def describe_signal(sig: CandidateSignal) -> dict[str, Any]:  # debugging aid
    return {"key": sig.candidate.key, "G_norm": float(sig.G.norm()),
            "theta": [tuple(t.shape) for t in sig.theta]}
