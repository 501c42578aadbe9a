"""Per-step cost of training the weight-sharing super-network against plain adapter training.

One training step = forward + backward + AdamW step on a batch, for a randomly initialised BERT
(no download): ``tiny`` (hidden 32, 2 layers, the tests' size) and ``minilm`` (MiniLM-L6's
shape: hidden 384, 6 layers, FFN 1536).  Methods:

  lora qv r8          LoRA r=8 on query,value through nas.inject.apply_plan (the usual baseline)
  plans standalone    the super-network's first four sampled sub-plans (largest, 3 random at
                      the LoRA-qv budget), each applied standalone; steps cycle through them
  supernet            the whole default space attached as super-adapters (+ all shortcuts);
                      each step activates the next of the same four sub-plans
  supernet + sens     the same with the AdaLoRA sensitivity update after every backward

Timing: warm-up, then rounds in which every method runs ``iters`` steps, method order rotated;
median per-step process CPU time and wall time.  Prints a table and writes it to
benchmarks/results/supernet_overhead.md, under the command, date and machine that measured it.
Measuring only: the md is the only record (no CSV is kept), so it is remade by measuring again,
which takes about 1-2 minutes on 2 shared CPU cores (the minilm size: 4 methods x (4 warm-up +
3 rounds x 4) steps of 0.5-1 s, see the md, plus building seven models; tiny: seconds).

Usage:  python benchmarks/supernet_overhead.py [--sizes tiny,minilm] [--rounds 3] [--iters 4]
        [--threads 1] [--out DIR]
"""
from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # _glue_report's machine line

from nas import Plan, discover  # noqa: E402
from nas.inject import apply_plan  # noqa: E402
from search_spaces.shortcuts import ShortcutSet  # noqa: E402
from proxies.trained import Sensitivity  # noqa: E402
from search_spaces import SPACES  # noqa: E402
from search_spaces.supernet import (PlanSampler, activate, attach_supernet,  # noqa: E402
                                    shortcut_choices)

RESULTS = ROOT / "benchmarks" / "results"
SIZES = {  # hidden, layers, heads, ffn, batch, seq
    "tiny": (32, 2, 2, 64, 8, 16),
    "minilm": (384, 6, 12, 1536, 16, 64),
}


def make_model(size: str, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    h, n, heads, ffn, _, _ = SIZES[size]
    cfg = BertConfig(vocab_size=1000, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=128, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    return BertForSequenceClassification(cfg)


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def setup(size: str):
    _, _, _, _, bs, seq = SIZES[size]
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, 1000, (bs, seq), generator=g),
             "labels": torch.randint(0, 2, (bs,), generator=g)}
    model = make_model(size)
    layout = discover(model)
    qv = Plan(modules={m.name: {"type": "lora", "rank": 8} for m in layout.modules
                       if m.role in ("q", "v")})
    budget = qv.count_params(layout)
    cands = SPACES["default"].candidates(layout)
    sampler = PlanSampler(cands, budget, seed=0)
    sels = [sampler.sample() for _ in range(4)]

    methods = {}
    lora = apply_plan(make_model(size), qv, layout)
    methods["lora qv r8"] = (lora, torch.optim.AdamW(trainable(lora), lr=1e-3), [None])
    plans = [apply_plan(make_model(size), Plan(modules=s.modules, shortcuts=s.shortcuts), layout)
             for s in sels]
    methods["plans standalone"] = (plans, [torch.optim.AdamW(trainable(m), lr=1e-3) for m in plans],
                                   [None])
    for name, with_sens in (("supernet", False), ("supernet + sens", True)):
        sn = make_model(size)
        for p in sn.parameters():
            p.requires_grad_(False)
        sn.classifier.requires_grad_(True)
        attach_supernet(sn, cands, shortcuts=ShortcutSet(sn, layout, shortcut_choices(cands)))
        sens = Sensitivity(sn) if with_sens else None
        methods[name] = (sn, torch.optim.AdamW(trainable(sn), lr=1e-3), [sels, sens])
    return batch, methods, budget, sels, sampler


def runner(batch, entry):
    model, opt, extra = entry
    counter = itertools.count()

    def step():
        i = next(counter)
        if isinstance(model, list):
            m, o = model[i % len(model)], opt[i % len(opt)]
        else:
            m, o = model, opt
            if extra[0] is not None:
                activate(m, extra[0][i % len(extra[0])])
        loss = m(**batch).loss
        loss.backward()
        if len(extra) > 1 and extra[1] is not None:
            extra[1].update()
        o.step()
        o.zero_grad(set_to_none=True)
    return step


def measure(size: str, rounds: int, iters: int) -> list[tuple]:
    batch, methods, budget, sels, sampler = setup(size)
    steps = {k: runner(batch, v) for k, v in methods.items()}
    for s in steps.values():  # warm-up: one pass over the four plans
        for _ in range(4):
            s()
    times = {k: ([], []) for k in steps}
    names = list(steps)
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            for _ in range(iters):
                c0, w0 = time.process_time(), time.perf_counter()
                steps[k]()
                times[k][0].append(time.process_time() - c0)
                times[k][1].append(time.perf_counter() - w0)
    ref = statistics.median(times["lora qv r8"][0])
    plan_sizes = [sampler.params(s) for s in sels]
    rows = []
    for k in names:
        cpu, wall = statistics.median(times[k][0]), statistics.median(times[k][1])
        rows.append((size, k, budget, cpu * 1e3, wall * 1e3, cpu / ref))
    print(f"{size}: budget {budget} (LoRA r8 on q,v); sampled plan sizes {plan_sizes}")
    return rows


def write_md(rows: list[tuple], meta: dict, path: Path) -> str:
    """The report: the table of ``rows`` under the title and the line naming ``meta``'s command,
    date and machine."""
    lines = ["| model | method | budget | CPU ms/step | wall ms/step | × LoRA qv r8 (CPU) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {s} | {k} | {b} | {c:.1f} | {w:.1f} | {x:.2f} |" for s, k, b, c, w, x in rows]
    text = (f"# Super-network step cost (torch {meta['torch']}, {meta['threads']} thread(s), "
            f"{meta['rounds']}x{meta['iters']} steps per method)\n\n"
            f"Made by `{meta['command']}` on {meta['date']}; machine: {meta['machine']}; "
            "see the script's docstring.\n\n" + "\n".join(lines) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,minilm", help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of supernet_overhead.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = args.sizes.split(",")
    if unknown := [s for s in sizes if s not in SIZES]:
        ap.error(f"--sizes {args.sizes}: unknown {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    from _glue_report import _machine

    argv = sys.argv[1:] if argv is None else argv
    meta = {"command": shlex.join(["python", "benchmarks/supernet_overhead.py", *argv]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": _machine("cpu"), "torch": torch.__version__,
            "threads": args.threads, "rounds": args.rounds, "iters": args.iters}
    rows = []
    for size in sizes:
        rows += measure(size, args.rounds, args.iters)
    print(write_md(rows, meta, args.out / "supernet_overhead.md"))


if __name__ == "__main__":
    main()
