"""Device and precision: checked before anything loads, and the bf16 frozen base.

``bf16`` is transformers' autocast.  ``bf16_frozen_base`` also stores the frozen base weights in
bfloat16 for the run (adapters, shortcuts and task head keep fp32 master weights), so autocast
need not re-cast every frozen weight in every forward; on our (loaded, 2-core) CPU benchmark it
was no clear gain over plain autocast (benchmarks/results/trainer_vs_peft*.md), so it is opt-in.  A bf16
copy kept for the run casts once (mixed-precision training keeps fp32 masters only for what is updated:
Micikevicius et al. 2018, "Mixed Precision Training").  The original fp32 weights are kept on
the host and put back at the end, so outputs and merges use the exact base.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import UserError


def resolve_device(device: str | None) -> torch.device:
    """``device`` (None: cuda when available) as a torch.device, or a UserError naming the fix."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:<index>") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise UserError(f"device {device!r} is not supported; use cpu, cuda or cuda:<index>")
    if not torch.cuda.is_available():
        raise UserError(f"device {device!r}: this torch ({torch.__version__}) sees no CUDA GPU; "
                        f"use --device cpu, or install a CUDA build of torch on a GPU machine")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); without it torch emulates
    bf16 matrix products, far slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def check_precision(device: torch.device, bf16: bool, fp16: bool) -> None:
    if bf16 and device.type == "cpu" and not native_cpu_bf16():
        logging.getLogger("nas").warning(
            "bf16 on a CPU without native bfloat16 (no AVX-512 BF16 or AMX; torch's CPU kernels: %s): steps "
            "run several times slower than fp32 (13x on a 2-core AVX2 machine, benchmarks/results/"
            "model_cost_bf16.md); drop --bf16 here", torch.backends.cpu.get_cpu_capability())
    if fp16 and device.type != "cuda":
        raise UserError("fp16 mixed precision needs a CUDA GPU (its loss scaling is CUDA's); "
                        "on a CPU use --bf16")
    if bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16; use --fp16")


def frozen_base_to(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Store every frozen floating-point parameter of ``model`` in ``dtype``; returns the
    originals (on the host) for ``restore_frozen_base``.  Norm weights stay fp32: they are
    tiny and autocast runs norms in fp32 anyway."""
    originals = {}
    norm_ids = {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm,)) or "Norm" in type(m).__name__
                for p in m.parameters(recurse=False)}
    for name, p in model.named_parameters():
        if p.requires_grad or not p.is_floating_point() or p.dtype == dtype or id(p) in norm_ids:
            continue
        originals[name] = p.detach().to("cpu", copy=True)
        p.data = p.data.to(dtype)
    return originals


def restore_frozen_base(model: nn.Module, originals: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in originals.items():
        params[name].data = value.to(params[name].device)
