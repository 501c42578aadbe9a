"""Forward+backward wall time and peak memory of ONE adapted linear layer.

Every method wraps the same frozen dense ``nn.Linear(d, d)`` (the base matmul is part of every
timing, as in a real network) and runs ``y = layer(x); y.backward(g)`` on ``tokens`` rows with
``x.requires_grad`` (the input gradient an upstream layer would need).  Methods:

  base          the frozen dense layer alone (the floor every method pays)
  ours lora     search_spaces LoRA r=8
  ours more     MoRe N=4, r=8 (same parameter count as LoRA r=8 on a square layer)
  ours <surm>   circulant, toeplitz, kronecker (r=8), ldr (r=2) at their natural sizes
  peft lora     peft.LoraConfig(r=8) through get_peft_model on a one-Linear module; the PEFT
                lora.Linear layer is timed directly, as ours are (no PeftModel wrapper)
  [previous]    ours LoRA / MoRe through the generic ``Adapter.forward`` (base + scale · delta,
                MoRe's delta by block-wise bmm): the implementation before the fused forwards,
                kept in the same run for a before/after comparison (``--no-previous`` drops it)

Timing: warm-up, then ``repeats`` rounds; in each round every method runs ``iters`` steps and
the method order rotates from round to round, so machine noise hits all methods alike.  The
reported time is the median over all rounds × iters, as wall time and as process CPU time
(on a shared CPU machine the CPU time is the steadier of the two: time spent waiting for a
core is not in it; on CUDA only wall time means anything).

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` during one step minus what was allocated
before it.  On CPU, the peak of the running sum of the torch CPU allocator's allocation/free
events recorded by ``torch.profiler`` (``profile_memory=True``) during one step: bytes torch
allocated beyond what it held before the step (output, saved activations, temporaries,
x.grad and the adapter's parameter gradients).  It is not process RSS (the allocator's cache
and Python objects are not in it), but it is exact and the same measure for every method.

Writes benchmarks/results/adapter_speed.csv (one row a method and size), adapter_speed.json (the
command, date, machine and settings of the run) and adapter_speed.md, made from those two;
--report-only writes the md again from them without measuring.  The default run takes about
5 minutes on 2 shared CPU cores, 1 thread: 3 sizes x 10 methods x 15 steps (2 warm-up, 3 rounds
x 4 timed, 1 for memory), and the kept md's medians of one step of every method sum to 2.0 s
(d=384), 5.9 s (768) and 11.4 s (1024), i.e. ~290 s.

Usage:  python benchmarks/adapter_speed.py [--dims 384,768,1024] [--tokens 4096]
        [--repeats 3] [--iters 4] [--threads 1] [--quick] [--out DIR] [--report-only]
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.options import int_list  # noqa: E402
from search_spaces import Adapter, count_params, make_adapter  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

OURS = [  # (label, kind, hparams)
    ("ours lora r8", "lora", {"rank": 8}),
    ("ours more N4 r8", "more", {"nblocks": 4, "rank": 8}),
    ("ours circulant", "circulant", {}),
    ("ours toeplitz", "toeplitz", {}),
    ("ours kronecker r8", "kronecker", {"rank": 8}),
    ("ours ldr r2", "ldr", {"rank": 2}),
]


class OneLinear(nn.Module):
    def __init__(self, base: nn.Linear):
        super().__init__()
        self.proj = base

    def forward(self, x):
        return self.proj(x)


class GenericForward(nn.Module):
    """An adapter run through the base-class forward: y = base(x) + scale * delta(x)."""

    def __init__(self, adapter: Adapter):
        super().__init__()
        self.adapter = adapter

    def forward(self, x):
        return Adapter.forward(self.adapter, x)


def frozen_base(d: int, device, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(d, d).to(device)
    lin.requires_grad_(False)
    return lin


@torch.no_grad()
def _nonzero_init(params, seed: int = 1):
    """Give zero-initialised factors small random values (same work, realistic numbers)."""
    g = torch.Generator().manual_seed(seed)
    for p in params:
        if torch.count_nonzero(p) == 0:
            p.copy_(torch.randn(p.shape, generator=g).to(p) * 0.01)


def build_methods(d: int, device, previous: bool = True) -> list[tuple[str, nn.Module, int]]:
    """(label, layer, trainable params) for every method on a (d -> d) layer."""
    methods = [("base (frozen dense)", frozen_base(d, device), 0)]
    for label, kind, hp in OURS:
        ad = make_adapter(kind, frozen_base(d, device), **hp)
        _nonzero_init(ad.trainable_parameters())
        n = sum(p.numel() for p in ad.parameters() if p.requires_grad)
        assert n == count_params(kind, d, d, **hp), (label, n)
        methods.append((label, ad, n))
        if previous and kind in ("lora", "more"):
            old = make_adapter(kind, frozen_base(d, device), **hp)
            _nonzero_init(old.trainable_parameters())
            methods.append((f"{label} [previous]", GenericForward(old), n))
    try:
        import peft
    except ImportError:  # pragma: no cover - peft is a dependency
        print("peft not installed: skipping PEFT LoRA", file=sys.stderr)
    else:
        cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["proj"])
        pm = peft.get_peft_model(OneLinear(frozen_base(d, device)), cfg)
        layer = pm.base_model.model.proj
        _nonzero_init([p for p in layer.parameters() if p.requires_grad])
        n = sum(p.numel() for p in layer.parameters() if p.requires_grad)
        methods.append(("peft lora r8", layer, n))
    return methods


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _zero_grads(layer: nn.Module, x: torch.Tensor):
    x.grad = None
    for p in layer.parameters():
        p.grad = None


def step(layer, x, g):
    y = layer(x)
    y.backward(g)


def timed_step(layer, x, g, device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward+backward."""
    _zero_grads(layer, x)
    _sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    step(layer, x, g)
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def peak_memory(layer, x, g, device) -> int:
    """Peak bytes allocated during one forward+backward beyond what was held before it."""
    _zero_grads(layer, x)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(layer, x, g)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(layer, x, g)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def bench_dim(d: int, tokens: int, repeats: int, iters: int, warmup: int, device,
              previous: bool = True) -> list[dict]:
    methods = build_methods(d, device, previous)
    torch.manual_seed(2)
    x = torch.randn(tokens, d, device=device, requires_grad=True)
    g = torch.randn(tokens, d, device=device)
    for _, layer, _ in methods:  # warm-up (allocator, kernels, FFT plans)
        for _ in range(warmup):
            timed_step(layer, x, g, device)
    times: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in methods}
    for r in range(repeats):
        k = r % len(methods)
        order = methods[k:] + methods[:k]  # rotate so no method always runs first or last
        for label, layer, _ in order:
            for _ in range(iters):
                times[label].append(timed_step(layer, x, g, device))
    rows = []
    for label, layer, n in methods:
        ts = [w for w, _ in times[label]]
        cs = [c for _, c in times[label]]
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        rows.append({
            "d": d, "method": label, "params": n,
            "ms": 1e3 * statistics.median(ts),
            "ms_q1": 1e3 * q[0], "ms_q3": 1e3 * q[2],
            "ms_min": 1e3 * min(ts),
            "cpu_ms": 1e3 * statistics.median(cs) if device.type == "cpu" else float("nan"),
            "peak_mb": peak_memory(layer, x, g, device) / 2**20,
        })
    return add_relative(rows)


def add_relative(rows: list[dict]) -> list[dict]:
    """Each row's overheads over the frozen base and its ratios to our and PEFT's LoRA, from the
    medians of its size d (the md computes them again from the CSV's medians: the rounded ratios
    in the CSV would round a second time)."""
    nan = float("nan")
    for d in dict.fromkeys(r["d"] for r in rows):
        by = {r["method"]: r for r in rows if r["d"] == d}
        base = by["base (frozen dense)"]
        for r in by.values():
            r["overhead_ms"] = r["ms"] - base["ms"]
            r["overhead_cpu_ms"] = r["cpu_ms"] - base["cpu_ms"]
            for key, ref in (("ours_lora", "ours lora r8"), ("peft_lora", "peft lora r8")):
                r[f"vs_{key}"] = r["ms"] / by[ref]["ms"] if ref in by else nan
                r[f"cpu_vs_{key}"] = r["cpu_ms"] / by[ref]["cpu_ms"] if ref in by else nan
    return rows


def machine_info(device, threads: int) -> dict:
    import peft

    info = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }
    try:
        info["loadavg_1m_at_start"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


FIELDS = ["d", "method", "params", "ms", "ms_q1", "ms_q3", "ms_min", "cpu_ms", "overhead_ms",
          "overhead_cpu_ms", "vs_ours_lora", "vs_peft_lora", "cpu_vs_ours_lora", "cpu_vs_peft_lora",
          "peak_mb"]


def write_results(rows, meta, out_dir: Path):
    """adapter_speed.csv and .json (what the md is made from), then the md from them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "adapter_speed.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    (out_dir / "adapter_speed.json").write_text(json.dumps(meta, indent=2) + "\n")
    return write_report(out_dir)


def write_report(out_dir: Path) -> str:
    """adapter_speed.md from the kept adapter_speed.csv and .json (the same bytes every time)."""
    meta = json.loads((out_dir / "adapter_speed.json").read_text())
    with (out_dir / "adapter_speed.csv").open(newline="") as f:
        rows = [{k: (v if k == "method" else int(v) if k in ("d", "params") else float(v)) for k, v in r.items()}
                for r in csv.DictReader(f)]
    md = markdown(add_relative(rows), meta)
    (out_dir / "adapter_speed.md").write_text(md)
    return md


def markdown(rows, meta) -> str:
    """The report: ``meta`` is adapter_speed.json's {command, command_note?, info, settings}."""
    info, args = meta["info"], argparse.Namespace(**meta["settings"])
    mem_note = ("torch.cuda.max_memory_allocated during one step minus memory held before it"
                if info["device"] != "cpu" else
                "peak of torch's CPU allocator (torch.profiler profile_memory events) during one "
                "step, beyond what was held before it: output, saved activations, temporaries, "
                "x.grad and parameter grads; not process RSS")
    lines = [
        "# Adapter speed: one adapted d x d linear, forward + backward",
        "",
        f"- command: `{meta['command']}`" + (f" ({meta['command_note']})" if meta.get("command_note") else ""),
        f"- date: {info['date']}",
        f"- machine: {info['cpu_count']} CPU cores ({info['cpu']}), device {info['device']}, "
        f"torch {info['torch']} ({info['torch_threads']} intra-op thread(s)), peft {info['peft']}, "
        f"Python {info['python']}"
        + (f", load average at start {info['loadavg_1m_at_start']}" if "loadavg_1m_at_start" in info else ""),
        f"- workload: {args.tokens} tokens x d, float32, x.requires_grad, `y = layer(x); "
        f"y.backward(g)`; the frozen dense base is inside every timing",
        f"- timing: {args.warmup} warm-up steps per method, then {args.repeats} rounds x "
        f"{args.iters} steps with the method order rotated per round; median (and quartiles) "
        f"over all {args.repeats * args.iters} steps",
        f"- memory: {mem_note}",
        "- overhead = median minus the frozen base's median (the adapter's own cost); ratios "
        "are 'wall / CPU' medians against our LoRA and PEFT's LoRA; [previous] = the "
        "implementation before the fused LoRA/MoRe forwards, measured in the same run",
        "",
        "| d | method | params | wall ms median (q1-q3) | CPU ms median | overhead ms wall / CPU "
        "| x ours LoRA wall / CPU | x PEFT LoRA wall / CPU | peak MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['d']} | {r['method']} | {r['params']:,} | {r['ms']:.1f} "
            f"({r['ms_q1']:.1f}-{r['ms_q3']:.1f}) | {r['cpu_ms']:.1f} | "
            f"{r['overhead_ms']:+.1f} / {r['overhead_cpu_ms']:+.1f} | "
            f"{r['vs_ours_lora']:.3f} / {r['cpu_vs_ours_lora']:.3f} | "
            f"{r['vs_peft_lora']:.3f} / {r['cpu_vs_peft_lora']:.3f} | {r['peak_mb']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int_list, default=(384, 768, 1024), help="comma-separated square sizes d")
    ap.add_argument("--tokens", type=int, default=4096, help="rows per batch")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--iters", type=int, default=4, help="steps per method per round")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up steps per method")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads on CPU (default: 1, steady on a shared machine)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: d=384, 1024 tokens, 2 rounds x 2 steps, not saved")
    ap.add_argument("--no-previous", action="store_true",
                    help="leave out the [previous] (generic-forward) LoRA and MoRe rows")
    ap.add_argument("--out", default=str(RESULTS), help="folder for adapter_speed.{csv,json,md}")
    ap.add_argument("--report-only", action="store_true",
                    help="write adapter_speed.md again from the kept .csv and .json, measuring nothing")
    args = ap.parse_args(argv)
    if args.report_only:
        if not (Path(args.out) / "adapter_speed.json").is_file():
            ap.error(f"--report-only: no adapter_speed.json in {args.out} (measure first)")
        print(write_report(Path(args.out)))
        return None
    if args.quick:
        args.dims, args.tokens, args.repeats, args.iters, args.warmup = (384,), 1024, 2, 2, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = args.threads if args.threads is not None else (torch.get_num_threads()
                                                             if device.type == "cuda" else 1)
    torch.set_num_threads(threads)
    dims = args.dims
    argv = sys.argv[1:] if argv is None else argv
    meta = {"command": shlex.join(["python", "benchmarks/adapter_speed.py", *argv]),
            "info": machine_info(device, threads),
            "settings": {"dims": list(dims), "tokens": args.tokens, "warmup": args.warmup, "repeats": args.repeats,
                         "iters": args.iters, "previous": not args.no_previous}}
    for d in dims:
        assert count_params("more", d, d, nblocks=4, rank=8) == count_params("lora", d, d, rank=8)
    rows = []
    for d in dims:
        t0 = time.time()
        rows += bench_dim(d, args.tokens, args.repeats, args.iters, args.warmup, device,
                          previous=not args.no_previous)
        print(f"d={d} done in {time.time() - t0:.0f}s", file=sys.stderr)
    if args.quick:
        print(markdown(rows, meta))
    else:
        print(write_results(rows, meta, Path(args.out)))
        print(f"wrote {args.out}/adapter_speed.csv, .json and .md", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
