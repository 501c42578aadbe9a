"""The one-at-a-time check: a candidate's proxy signal with the real adapter attached alone.

Slow (a model pass per candidate); it verifies the joint scoring of proxies/signals.py, which
must give the same signal.
"""
from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import torch
from torch import nn

from search_spaces.anatomy import ModelLayout
from search_spaces.attach import attach, detach, shortcut_set
from search_spaces.base import is_conv1d
from search_spaces.shortcuts import Shortcut, parse_shortcut_key

from .base import CandidateSignal, Proxy
from .signals import (LossFn, Probe, synflow_inputs, absolute_weights, compute_dtype, default_loss,
                      dense_dw, model_device, module_params, preserved, scoring_module, synflow_objective,
                      to_device, weight_grad_as_dw)


# ---- one candidate at a time, with the real adapter in the model ---------------------------------
class _ZeroValue(nn.Module):
    """Wraps a real shortcut path so it adds 0 in value but keeps its gradient, plus a probe."""

    def __init__(self, path: Shortcut, dots: list, dim: int):
        super().__init__()
        self.path = path
        self.probe = Probe(dim, path.lora_A.dtype, path.lora_A.device)
        self.enabled = True
        self._dots = dots

    def forward(self, h):
        y = self.path(h)
        if y.requires_grad:
            yd = y.detach()
            y.register_hook(lambda g: self._dots.append((g * yd).reshape(-1, yd.shape[-1]).sum(0)))
        return (y - y.detach()) + self.probe(h)


def one_at_a_time_signal(model: nn.Module, layout: ModelLayout, cand, batches: list[dict],
                         proxy: Proxy, *, loss_fn: LossFn | None = None, seed: int = 0) -> CandidateSignal:
    """The same signal with the candidate really attached alone (slow; for verification).

    Adapters go in through ``search_spaces.attach`` with the scoring-init values, and the base weight
    is compensated by -ΔW so the forward point is the base model's; a shortcut goes in through
    ``attach`` and its real path is wrapped to add zero in value.  The model must not carry
    a plan already.  Everything is undone afterwards.
    """
    dtype, device = compute_dtype(model), model_device(model)
    loss_fn = loss_fn or default_loss
    ref = scoring_module(cand, layout, seed=seed, dtype=dtype, device=device)
    theta_s = [p.detach().clone() for p in module_params(ref)]
    modules = {} if cand.is_shortcut else {cand.target: cand.choice_dict}
    shortcuts = {cand.target: cand.choice_dict} if cand.is_shortcut else {}
    dots: list[torch.Tensor] = []
    with torch.random.fork_rng(devices=[]), preserved(model, restore_values=True):
        ctx = absolute_weights(model) if proxy.signal == "synflow" else nullcontext()
        with ctx:
            if proxy.signal == "synflow":
                theta_s = [t.abs() for t in theta_s]
            attach(model, layout, modules, shortcuts)
            model.eval()
            hook = None
            try:
                if cand.is_shortcut:
                    sset = shortcut_set(model)
                    layer, kind = parse_shortcut_key(cand.target)
                    path = sset.get(layer, kind)
                    with torch.no_grad():
                        for p, t in zip(module_params(path), theta_s):
                            p.copy_(t)
                    wrapper = _ZeroValue(path, dots, layout.hidden_size)
                    sset.paths[f"{layer}_{kind}"] = wrapper
                    theta = module_params(path)
                    g_param, g_mod = wrapper.probe.P, None
                else:
                    adapter = model.get_submodule(cand.target)
                    with torch.no_grad():
                        for p, t in zip(adapter.trainable_parameters(), theta_s):
                            p.copy_(t.to(p.dtype))
                        dw = adapter.delta_weight().to(adapter.base.weight.dtype)
                        adapter.base.weight.sub_(dw.T if is_conv1d(adapter.base) else dw)
                    theta = adapter.trainable_parameters()

                    def record(mod, args, out):
                        # the adapter's contribution z = out - base(x) (= ΔW x, whatever fused
                        # forward the adapter uses); per channel, sum_t dL/dy · z
                        if out.requires_grad:
                            with torch.no_grad():
                                z = out.detach() - mod.base(args[0]).detach()
                            out.register_hook(lambda g: dots.append((g * z).reshape(-1, z.shape[-1]).sum(0)))

                    hook = adapter.register_forward_hook(record)
                    g_param, g_mod = adapter.base.weight, adapter.base
                for p in model.parameters():
                    p.requires_grad_(False)
                for p in theta:
                    p.requires_grad_(True)
                g_param.requires_grad_(True)
                wrt = list(theta) + [g_param]
                passes = ([synflow_inputs(batches, device)] if proxy.signal == "synflow"
                          else [to_device(b, device) for b in batches])
                acc = None
                for inp in passes:
                    with torch.enable_grad():
                        obj = (synflow_objective(model, inp) if proxy.signal == "synflow"
                               else loss_fn(model, inp))
                        gs = torch.autograd.grad(obj, wrt, allow_unused=True)
                    gs = [torch.zeros_like(w) if g is None else g.detach().to(dtype) for w, g in zip(wrt, gs)]
                    acc = gs if acc is None else [a + g for a, g in zip(acc, gs)]
                acc = [a / len(passes) for a in acc]
                G = acc[-1]
                if g_mod is not None:
                    G = weight_grad_as_dw(g_mod, G)
                sig = CandidateSignal(
                    candidate=cand, G=G, theta=[p.detach().clone().to(dtype) for p in theta],
                    grads=acc[:-1], dw=dense_dw(ref).detach() if proxy.signal != "synflow" else None,
                    channel_dots=[d.to(dtype) for d in dots],
                    build=partial(scoring_module, cand, layout, seed=seed, dtype=dtype, device=device),
                )
                if proxy.signal == "synflow":
                    with torch.no_grad():
                        for p in module_params(ref):
                            p.abs_()
                    sig.dw = dense_dw(ref).detach()
            finally:
                if hook is not None:
                    hook.remove()
                detach(model, modules, shortcuts=bool(shortcuts))
    return sig
