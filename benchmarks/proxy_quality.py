"""How well does each zero-cost proxy rank the modules that matter?

On the real packaged MiniLM (BERT, 6 layers, hidden 384) and real MRPC / RTE training data:

1. proxy scores: ``proxies.score_candidates`` on the whole default search space
   (SPACES['default']: LoRA r2/4/8, MoRe, SURM types, the 4 shortcuts) from a few batches of
   the task's training split; the per-module score is the module's ``lora r8`` candidate.
   Each proxy is timed; the time is reported as a multiple of one training step (batch 16,
   padded to max_len 128, LoRA r8 on every module, AdamW) and against a default short search
   trial (200 such steps): scoring must cost <= 5% of it.
2. measured importance: for each module (6 layers x q, k, v, o, ffn_up, ffn_down, or a
   subset) a LoRA r=8 adapter on that module alone plus the classifier head is trained for
   a short budget; importance = validation loss of head-only training minus validation loss
   with the module (same steps, data order, head init), on a held-out part of TRAIN (the
   GLUE dev set is never used).  Mean over seeds.  To fit the time budget on 2 shared CPU
   cores the frozen layers below the adapted module are run once and cached (exact: they
   are frozen and unchanged), dropout is off, and batches are length-bucketed.
3. Spearman correlation (scipy) between each proxy's per-module scores and the importance,
   per task; the table goes to benchmarks/results/proxy_quality.{csv,md}.
4. beside the zero-cost proxies, 'trained' (the importance the super-network search ranks
   with): the default space trained as one super-network for --supernet-steps steps (a
   sub-plan within --supernet-budget per step),
   each candidate scored by AdaLoRA's smoothed sensitivity on the trained weights, normalised
   within its kind (benchmarks/_proxy_trained.py); timed like the others.

Writes, in --out (benchmarks/results): <name>_<task>.json per task (partial results, for
--merge and --reuse), then <name>.json (every task's results, the notes, and the command, date
and machine of each task's run: what the md is made from), <name>.csv and <name>.md; --name
defaults to proxy_quality.  --report-only writes the csv and md again from <name>.json.

    python benchmarks/proxy_quality.py                      # the full run (see below)
    python benchmarks/proxy_quality.py --quick              # a smoke run (minutes)
    python benchmarks/proxy_quality.py --supernet-steps 0   # the zero-cost proxies only
    python benchmarks/proxy_quality.py --report-only        # the tables again, measuring nothing

Running time on 2 shared CPU cores, 1 thread: planned 20-30 min a task; the kept
proxy_quality.md measured 41 min (MRPC) and 48 min (RTE) as two parallel processes under load
(~2300 s and ~2700 s, a training step 28-30 s), without 'trained'; with --reuse (importance
read back, proxies and 200-step 'trained' only) MRPC took ~2 min (proxy_quality_trained_mrpc.md).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import proxies  # noqa: E402
from nas import Plan, apply_plan, discover  # noqa: E402
from nas.models import load_model, load_tokenizer  # noqa: E402
from search_spaces import SPACES, Adapter, Candidate  # noqa: E402
from search_spaces.space import freeze_choice  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from _proxy_data import DATA, Cache, Runner, bucketed_batches, collate, encode, read_task  # noqa: E402
from _proxy_report import TRIAL_STEPS, write_report, write_tables  # noqa: E402
from _proxy_trained import trained_scores  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ROLES = ["q", "k", "v", "o", "ffn_up", "ffn_down"]



def warm_head(model, cache, examples, train_ids, val_ids, steps=50, lr=1e-2):
    """Train the classifier head alone on the frozen model's pooled features (cheap: the
    final hidden states are cached), so the short per-module runs start from a fitted head
    and measure what the adapter adds, not how fast the head finds the label prior."""
    with torch.no_grad():
        feats, labels = [], []
        for s in range(0, len(train_ids), 64):
            h, mask, y = cache.batch(6, train_ids[s:s + 64], examples)
            feats.append(model.bert.pooler(h))
            labels.append(y)
        X, Y = torch.cat(feats), torch.cat(labels)
    head = model.classifier
    for p in head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(head(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in head.parameters():
        p.requires_grad_(False)
    return [p.detach().clone() for p in head.parameters()]


def lora_candidate(layout, name) -> Candidate:
    m = layout.module(name)
    return Candidate(name, m.layer, m.role, freeze_choice({"type": "lora", "rank": 8}), 8 * (m.d_in + m.d_out))


def train_run(model, runner, cache, examples, layout, module, train_batches, val_batches, head0,
              lr, seed, train_head=True, eval_at=None):
    """Adapter on `module` (None: head only) + head; validation losses at the `eval_at` steps."""
    with torch.no_grad():
        for p, v in zip(model.classifier.parameters(), head0):
            p.copy_(v)
    torch.manual_seed(seed)
    start = 6 if module is None else layout.module(module).layer
    if module is not None:
        plan = Plan.from_candidates([lora_candidate(layout, module)], layout, model={"name_or_path": "minilm"})
        apply_plan(model, plan, layout)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.classifier.parameters():
            p.requires_grad_(True)
    for p in model.classifier.parameters():
        p.requires_grad_(train_head)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # head frozen, no adapter: the warm head's validation loss at every point
        train_batches, eval_at = [], [0]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0) if params else None
    model.eval()  # dropout off: short runs, less noise
    eval_at = set(eval_at or [len(train_batches)])

    def evaluate():
        total, n = 0.0, 0
        with torch.no_grad():
            for idx in val_batches:
                h, mask, y = cache.batch(start, idx, examples)
                total += F.cross_entropy(runner.logits_from(start, h, mask), y, reduction="sum").item()
                n += len(idx)
        return total / n

    try:
        out = [evaluate()] if 0 in eval_at else []
        for step, idx in enumerate(train_batches, start=1):
            h, mask, y = cache.batch(start, idx, examples)
            loss = F.cross_entropy(runner.logits_from(start, h, mask), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step in eval_at:
                out.append(evaluate())
        return out
    finally:
        if module is not None:
            ad = model.get_submodule(module)
            if isinstance(ad, Adapter):
                parent, _, child = module.rpartition(".")
                setattr(model.get_submodule(parent), child, ad.base)
        for p in model.parameters():
            p.requires_grad_(False)


# ---- timing -----------------------------------------------------------------------------------
def train_step_seconds(model, layout, examples, bs=16, max_len=128, reps=3):
    """Seconds per training step of a default trial: batch 16 padded to 128, LoRA r8 on every
    module (+ head), AdamW; on a deep copy, median of `reps` after one warm-up."""
    import copy

    m = copy.deepcopy(model)
    plan = Plan.from_candidates([lora_candidate(layout, x.name) for x in layout.modules], layout,
                                model={"name_or_path": "minilm"})
    apply_plan(m, plan, layout)
    m.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for r in range(reps + 1):
        batch = collate(examples[r * bs:(r + 1) * bs], pad_to=max_len)
        t = time.perf_counter()
        m(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    del m
    return statistics.median(times[1:])


# ---- main -------------------------------------------------------------------------------------
def spearman(x, y):
    from scipy.stats import spearmanr

    r = spearmanr(x, y)
    return float(r.statistic), float(r.pvalue)


def run_task(task, args, model, tok, layout, space_cands, log):
    t_task = time.perf_counter()
    rows = read_task(task, args.data_dir)
    rng = random.Random(0)
    order = list(range(len(rows)))
    rng.shuffle(order)
    rows = [rows[i] for i in order]
    examples = encode(tok, rows, args.max_len)
    lengths = [len(e["input_ids"]) for e in examples]
    n_val = args.n_val
    val_idx = list(range(n_val))  # held-out part of TRAIN
    train_idx = list(range(n_val, len(examples)))
    need = args.steps * args.batch
    # proxies: a few batches from the training part (disjoint from the validation part)
    score_idx = train_idx[-args.score_batches * args.batch:]
    score_batches = [collate([examples[k] for k in score_idx[b * args.batch:(b + 1) * args.batch]])
                     for b in range(args.score_batches)]
    per_seed_train = {s: bucketed_batches(train_idx[: max(need * 2, need)], lengths, args.batch, seed=s)[: args.steps]
                      for s in range(args.seeds)}
    val_batches = [val_idx[i:i + 64] for i in range(0, n_val, 64)]

    # 1. proxy scores on the whole default space, timed (proxies with the same signal share
    #    the gradient collection; each one's time is collection + its own scoring)
    result = {"task": task, "proxies": {}}
    all_scores, all_secs = proxies.score_many(model, layout, space_cands, score_batches, args.proxies)
    for name in args.proxies:
        scores, secs = all_scores[name], all_secs[name]
        vals = np.array(list(scores.values()))
        ok = bool(np.all(np.isfinite(vals)) and np.any(vals != 0) and len(set(vals.tolist())) > 1)
        by_kind = {}
        for c in space_cands:
            by_kind.setdefault(c.label if not c.is_shortcut else "shortcut", []).append(scores[c.key])
        log(f"[{task}] {name}: scored {len(scores)} candidates in {secs:.1f}s; non-degenerate={ok}; "
            f"distinct={len(set(vals.tolist()))}; zero={int((vals == 0).sum())}")
        if not ok:
            raise AssertionError(f"{name} degenerate on {task}")
        result["proxies"][name] = {"seconds": secs, "scores": scores, "non_degenerate": ok,
                                   "kind_means": {k: float(np.mean(v)) for k, v in by_kind.items()}}
    if args.supernet_steps:
        batches = [collate([examples[k] for k in b]) for b in
                   bucketed_batches(train_idx, lengths, args.batch, seed=0)[:args.supernet_steps]]
        scores, secs, losses = trained_scores(
            model, layout, space_cands, batches, steps=args.supernet_steps, budget=args.supernet_budget,
            lr=args.lr, warmup=args.supernet_steps // 10)
        vals = np.array(list(scores.values()))
        log(f"[{task}] trained: super-network {args.supernet_steps} steps (loss {np.mean(losses[:10]):.3f} -> "
            f"{np.mean(losses[-10:]):.3f}), {len(scores)} candidates scored in {secs:.1f}s; "
            f"never trained (score 0): {int((vals == 0).sum())}")
        result["proxies"]["trained"] = {
            "seconds": secs, "scores": scores, "non_degenerate": bool(len(set(vals.tolist())) > 1),
            "kind_means": {}, "supernet_loss": [float(np.mean(losses[:10])), float(np.mean(losses[-10:]))]}
    if args.reuse:
        prev = json.loads(Path(args.reuse.format(task=task)).read_text())
        result.update({k: prev[k] for k in ("importance", "head_only_val_loss", "modules")})
        modules = prev["modules"]
        return _correlate(result, modules, space_cands, log, t_task)

    # 2. measured importance
    runner = Runner(model)
    modules = [m.name for m in layout.modules if m.layer in args.layers and m.role in args.roles]
    used = sorted({k for s in per_seed_train.values() for b in s for k in b} | set(val_idx))
    ex = {k: examples[k] for k in used}
    t = time.perf_counter()
    cache = Cache(runner, ex, [layout.module(m).layer for m in modules] + [6])
    log(f"[{task}] cached layer inputs for {len(used)} examples in {time.perf_counter() - t:.1f}s")
    if args.head_steps:
        t = time.perf_counter()
        head0 = warm_head(model, cache, ex, [k for k in used if k not in set(val_idx)], val_idx,
                          steps=args.head_steps)
        log(f"[{task}] head warm-started on frozen features in {time.perf_counter() - t:.1f}s")
    else:  # the head as loaded (random init, as at the start of a search trial)
        head0 = [p.detach().clone() for p in model.classifier.parameters()]
    eval_at = sorted({max(1, round(args.steps * f)) for f in args.eval_fracs})
    base_loss = {}
    for s in range(args.seeds):
        base_loss[s] = train_run(model, runner, cache, ex, layout, None, per_seed_train[s], val_batches,
                                 head0, args.lr, seed=s, train_head=not args.freeze_head, eval_at=eval_at)
        if len(base_loss[s]) == 1:
            base_loss[s] = base_loss[s] * len(eval_at)
    log(f"[{task}] head-only val loss: {base_loss}")
    importance, per_seed = {}, {}
    for i, mod in enumerate(modules):
        t = time.perf_counter()
        losses = [train_run(model, runner, cache, ex, layout, mod, per_seed_train[s], val_batches,
                            head0, args.lr, seed=s, train_head=not args.freeze_head, eval_at=eval_at)
                  for s in range(args.seeds)]
        # mean over the evaluation points of the trajectory: less noisy than the end point
        per_seed[mod] = [float(np.mean(np.array(base_loss[s]) - np.array(l))) for s, l in enumerate(losses)]
        importance[mod] = float(np.mean(per_seed[mod]))
        log(f"[{task}] {i + 1}/{len(modules)} {mod.split('layer.')[-1]}: importance "
            f"{importance[mod]:+.4f} {[round(v, 4) for v in per_seed[mod]]} (val {np.mean(losses[0]):.4f}) "
            f"{time.perf_counter() - t:.1f}s")
    result["importance"] = importance
    result["importance_per_seed"] = per_seed
    result["head_only_val_loss"] = base_loss
    if args.seeds > 1:
        a = np.array([per_seed[m] for m in modules])
        result["seed_agreement_spearman"] = spearman(a[:, 0], a[:, 1])[0]
        log(f"[{task}] importance agreement between seeds 0 and 1: spearman "
            f"{result['seed_agreement_spearman']:+.3f}")
    return _correlate(result, modules, space_cands, log, t_task)


def _correlate(result, modules, space_cands, log, t_task):
    key_of = {c.target: c.key for c in space_cands if c.label == "lora r8"}
    imp = [result["importance"][m] for m in modules]
    for name, res in result["proxies"].items():
        sc = [res["scores"][key_of[m]] for m in modules]
        rho, p = spearman(sc, imp)
        res["spearman"], res["p_value"] = rho, p
        log(f"[{result['task']}] {name}: spearman {rho:+.3f} (p={p:.3g})")
    result["modules"] = modules
    result["seconds"] = time.perf_counter() - t_task
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["MRPC", "RTE"])
    ap.add_argument("--proxies", nargs="+", default=sorted(proxies.PROXIES))
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)  # adapter and head
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--roles", nargs="+", default=ROLES)
    ap.add_argument("--n-val", type=int, default=192)
    ap.add_argument("--score-batches", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--freeze-head", action="store_true", help="train the adapter only (head stays warm)")
    ap.add_argument("--head-steps", type=int, default=0, help="head warm-up steps on frozen features (0: none)")
    ap.add_argument("--eval-fracs", type=float, nargs="+", default=[0.5, 0.75, 1.0],
                    help="evaluate at these fractions of the run; importance = mean over them")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 layers, 10 steps")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--tag", default="", help="suffix of the partial-result json (parallel runs)")
    ap.add_argument("--merge", nargs="*", help="only merge partial json files into the table")
    ap.add_argument("--note", action="append", default=[], help="a line for the md's notes")
    ap.add_argument("--reuse", help="re-score only; take importance from this json ({task} -> name)")
    ap.add_argument("--step-seconds", type=float, help="skip the train-step timing, use this")
    ap.add_argument("--data-dir", default=str(DATA), help="GLUE folder with MRPC/ and RTE/")
    ap.add_argument("--supernet-steps", type=int, default=200,
                    help="super-network training steps of the 'trained' importance (0: leave it out)")
    ap.add_argument("--supernet-budget", default="0.1%", help="budget of the sampled sub-plans")
    ap.add_argument("--name", default="proxy_quality",
                    help="file names: NAME.{json,csv,md} and NAME_<task><tag>.json (default: %(default)s)")
    ap.add_argument("--report-only", action="store_true",
                    help="write NAME.csv and NAME.md again from the kept NAME.json, measuring nothing")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        if not (out / f"{args.name}.json").is_file():
            ap.error(f"--report-only: no {args.name}.json in {out} (measured before it was kept, or not yet)")
        return write_report(out, args.name)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge is not None:
        return write_tables([json.loads(Path(f).read_text()) for f in args.merge], out, args.note, args.name)
    missing = [t for t in args.tasks if not (Path(args.data_dir) / t / "train.tsv").is_file()]
    if missing:
        ap.error(f"--tasks {' '.join(missing)}: no train.tsv under {args.data_dir}/<task>/ (set --data-dir)")
    if args.quick:
        args.layers, args.steps, args.n_val = [1, 4], 10, 64
        args.supernet_steps = min(args.supernet_steps, 20)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    from _glue_report import _machine

    argv = sys.argv[1:] if argv is None else argv
    made_by = {"command": shlex.join(["python", "benchmarks/proxy_quality.py", *argv]),
               "date": time.strftime("%Y-%m-%d %H:%M"), "machine": _machine("cpu")}

    def log(msg):
        print(f"{time.perf_counter() - t0:7.1f}s {msg}", flush=True)

    torch.manual_seed(0)  # the classifier head's random init
    model = load_model(None)
    tok = load_tokenizer(None)
    layout = discover(model)
    space_cands = SPACES["default"].candidates(layout)
    log(f"MiniLM: {len(layout.modules)} modules, default space {len(space_cands)} candidates, "
        f"{torch.get_num_threads()} thread(s)")
    results = []
    for task in args.tasks:
        ex = encode(tok, read_task(task, args.data_dir)[:64], args.max_len)
        step = args.step_seconds or train_step_seconds(model, layout, ex)
        log(f"[{task}] one training step (batch 16, len 128, LoRA r8 everywhere): {step:.2f}s")
        res = run_task(task, args, model, tok, layout, space_cands, log)
        res["train_step_seconds"] = step
        res["config"] = {k: v for k, v in vars(args).items() if k not in ("merge",)}
        res["made_by"] = made_by
        for r in res["proxies"].values():
            r["steps_equivalent"] = r["seconds"] / step
            r["trial_fraction"] = r["seconds"] / (TRIAL_STEPS * step)
        results.append(res)
        part = out / f"{args.name}_{task}{args.tag}.json"
        part.write_text(json.dumps(res, indent=1, default=float))
        log(f"[{task}] done in {res['seconds']:.0f}s -> {part}")
    write_tables(results, out, args.note, args.name)
    log("total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
