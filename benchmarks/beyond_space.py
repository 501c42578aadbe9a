"""Beyond the search space at 0.02%: can any well-known way of spending ~4.5k parameters reach PEFT
LoRA r = 8 in the SST-2 setting of the search vs uniform LoRA baselines (packaged MiniLM, 8,000
rows, 1 epoch)?

The search's best 0.02% plans (LoRA r1 on value, MoRe, the SURM kinds, shortcuts; see
placement_ceiling_kinds.md) stay about 0.9 point below PEFT LoRA r = 8 (16x their size).  This
trains what else the field would try at that size, beside LoRA r1 on value (layers 1-5, 3,840
parameters, the widest uniform plan that fits), at the same seeds (same head and data order):
  - LoRA initialised from the data: A along the top right singular vectors of the full
    fine-tuning gradient with B = 0 (the A half of LoRA-GA, Wang et al. 2024: the first step of B
    then follows the gradient's best rank-r direction, and the model starts unchanged), and
    PiSSA (Meng et al. 2024: A, B from the weight's principal singular vectors, the rest frozen);
  - no adapter: tuning LayerNorms (LN-tuning) or biases (BitFit, Ben Zaken et al. 2022);
  - VeRA (Kopiczko et al. 2024, PEFT's): frozen shared random rank-256 projections and trainable
    scaling vectors, 640 parameters per module, so rank 256 at LoRA r1's size.

    python benchmarks/beyond_space.py --seeds 0,1,2
    python benchmarks/beyond_space.py --report-only

Writes benchmarks/results/beyond_space.{md,csv,png}; runs are kept as JSON under --runs-dir, by
default placement_ceiling.py's study (the LoRA reference's runs are its own): benchmarks/.cache/runs/
placement_ceiling/, packed into benchmarks/results/runs/placement_ceiling.tar.xz at the end of a run
that trains.  Each method's lr is the best of its grid on dev: a ceiling for every method alike, not
a protocol result.  On 2 CPU cores (1 thread) a run takes ~1 min: 3 seeds of the 6 methods' grids
and the reference's are 69 runs (~1.1 h).
"""
from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _glue_train  # noqa: E402
import placement_ceiling as pc  # noqa: E402
from _glue_methods import Spec  # noqa: E402
from _runs_archive import pack, runs_dir  # noqa: E402
from nas.options import int_list  # noqa: E402

BUDGET, GRAD_BATCHES = "0.02%", 4
REFERENCE = "uniform value r1 on layers 1-5 (the widest that fits)"  # placement_ceiling's plan
# name -> (what is trained, lr grid): each grid brackets the method's best (vectors want larger lrs).
METHODS = {
    "LoRA r1 on value, layers 1-5, gradient-aligned A": ({"init": "gradient"}, (2e-3, 5e-3, 1e-2)),
    "LoRA r1 on value, layers 1-5, PiSSA init": ({"init": "pissa"}, (5e-4, 2e-3, 5e-3, 1e-2)),
    "LayerNorm after the FFN, layers 1-5 (LN-tuning)": (
        {"unfreeze": [f"encoder.layer.{i}.output.LayerNorm.{w}" for i in range(1, 6) for w in ("weight", "bias")]},
        (2e-3, 5e-3, 2e-2)),
    "LayerNorm scales of both LNs, layers 1-5 (LN-tuning, gamma only)": (
        {"unfreeze": [f"encoder.layer.{i}.{ln}.LayerNorm.weight" for i in range(1, 6)
                      for ln in ("attention.output", "output")]}, (2e-3, 5e-3, 2e-2)),
    # BitFit's two most useful biases (query, FFN up) where they fit.
    "FFN up bias on layers 4-5, query bias on layers 3-5 (BitFit)": (
        {"unfreeze": [f"encoder.layer.{i}.intermediate.dense.bias" for i in (4, 5)]
         + [f"encoder.layer.{i}.attention.self.query.bias" for i in (3, 4, 5)]}, (2e-2, 5e-2, 1e-1, 2e-1)),
    "VeRA r256 on value, every layer": ({"vera": {"r": 256, "targets": ["value"], "layers": list(range(6))}},
                                        (1e-2, 2e-2, 5e-2)),
}
REFERENCE_LRS = (2e-3, 5e-3, 1e-2)


# ---- the inits (pure: tested on a tiny layer) -----------------------------------------------
@torch.no_grad()
def align_to_gradient(lora, grad: torch.Tensor) -> None:
    """A's rows := the top right singular vectors of ``grad`` (d_out x d_in), at the row norm
    Kaiming-uniform gives in expectation (sqrt(1/3)), so the lr means what it means for LoRA;
    B stays 0, so the layer starts as the base."""
    r = lora.hparams["rank"]
    _, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
    lora.lora_A.copy_(vh[:r] * math.sqrt(1 / 3))
    lora.lora_B.zero_()


@torch.no_grad()
def pissa(lora) -> None:
    """B A := the weight's top-r singular triplets (scale included); the base keeps the rest, so
    the layer's function is unchanged."""
    r, s = lora.hparams["rank"], lora.scale
    w = lora.base.weight
    u, sv, vh = torch.linalg.svd(w.float(), full_matrices=False)
    k = (sv[:r] / s).sqrt()
    lora.lora_A.copy_(k[:, None] * vh[:r])
    lora.lora_B.copy_(u[:, :r] * k[None])
    w.sub_((s * lora.lora_B @ lora.lora_A).to(w.dtype))


def full_gradients(trainer, loras: list) -> dict:
    """Each adapted layer's base-weight gradient, averaged over the first GRAD_BATCHES training
    batches (the torch RNG is restored, so data order and dropout match the reference's)."""
    for m in loras:
        m.base.weight.requires_grad_(True)
    with torch.random.fork_rng(), torch.enable_grad():
        trainer.model.train()
        batches = iter(trainer.get_train_dataloader())
        for _ in range(GRAD_BATCHES):
            trainer.model(**next(batches)).loss.backward()
    out = {m: m.base.weight.grad / GRAD_BATCHES for m in loras}
    for m in loras:
        m.base.weight.grad = None
        m.base.weight.requires_grad_(False)
    return out


# ---- a method -> a trainer ------------------------------------------------------------------
def build(spec: Spec, ctx, data, cfg, model):
    from nas import Plan
    from nas.train import prepare
    from nas.train.trainer import trainer_for
    from search_spaces.anatomy import HEAD_NAMES
    from search_spaces.lora import LoRA

    pl = spec.payload
    if "init" in pl:
        trainer = prepare(Plan.from_dict(pl["plan"]), cfg, model=model, data=data)
        loras = [m for m in trainer.model.modules() if isinstance(m, LoRA)]
        if pl["init"] == "gradient":
            grads = full_gradients(trainer, loras)
            for m in loras:
                align_to_gradient(m, grads[m])
        else:
            for m in loras:
                pissa(m)
        return trainer
    if "unfreeze" in pl:
        for name, p in model.named_parameters():
            p.requires_grad_(name.split(".")[0] in HEAD_NAMES or named(name, pl["unfreeze"]))
        return trainer_for(model, data, cfg)
    from peft import VeraConfig, get_peft_model

    v = pl["vera"]
    model = get_peft_model(model, VeraConfig(r=v["r"], target_modules=v["targets"], layers_to_transform=v["layers"],
                                             modules_to_save=list(HEAD_NAMES[:1]), task_type="SEQ_CLS"))
    return trainer_for(model, data, cfg)


_glue_train.BUILDERS["beyond"] = build


def named(name: str, suffixes) -> bool:
    """Whether a parameter's full name (``bert.encoder...``) ends with one of ``suffixes``."""
    return any(name == s or name.endswith("." + s) for s in suffixes)


def params_of(payload: dict, ref_params: int, template) -> int:
    if "init" in payload:
        return ref_params
    if "unfreeze" in payload:
        return sum(p.numel() for n, p in template.named_parameters() if named(n, payload["unfreeze"]))
    v = payload["vera"]
    d_out = {n.split(".")[-1]: m.out_features for n, m in template.named_modules() if isinstance(m, torch.nn.Linear)}
    return sum(v["r"] + d_out[t] for t in v["targets"] for _ in v["layers"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--seeds", type=int_list, default=(0, 1, 2), help="comma-separated, e.g. 0,1,2")
    ap.add_argument("--only", default="", metavar="REGEX", help="only the methods whose name matches")
    ap.add_argument("--runs-dir", type=Path, help="the runs' JSONs (default: placement_ceiling.py's)")
    ap.add_argument("--out", type=Path, default=pc.RESULTS / "beyond_space", help="output prefix")
    ap.add_argument("--report-only", action="store_true", help="tables and plot from the saved runs")
    args = ap.parse_args(argv)
    runs = args.runs_dir or runs_dir("placement_ceiling")
    if not runs.is_dir() and args.report_only:
        ap.error(f"--runs-dir {runs}: no such folder (nothing to report)")
    bench = pc.Bench(pc.SEARCH_VS_BASELINES, [], runs, threads=1)
    torch.set_num_threads(bench.threads)
    (name, ref, ref_params), = pc.specs(bench, "sst2", {}, [BUDGET], re.escape(REFERENCE))[BUDGET]
    tpl = bench.ctx("sst2").template
    seeds, run = args.seeds, not args.report_only
    rows = pc.collect(bench, "sst2", {BUDGET: [(name, ref, ref_params)]}, seeds, {BUDGET: REFERENCE_LRS}, run)
    table = [(name, ref, ref_params)]
    for label, (payload, lrs) in METHODS.items():
        if not re.search(args.only, label):
            continue
        payload = {**payload, "plan": ref.payload["plan"]} if "init" in payload else payload
        spec = Spec("beyond", pc.slug(label), payload)
        table.append((label, spec, params_of(payload, ref_params, tpl)))
        rows += pc.collect(bench, "sst2", {BUDGET: [table[-1]]}, seeds, {BUDGET: lrs}, run)
    if not rows:
        print("no runs yet")
        return 1
    summary = pc.summarize(rows, {BUDGET: table})
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(shlex.quote(a) for a in argv if a != "--report-only")
    pc.write(summary, rows, args.out, "sst2", command, pc.best_lr_lines(summary, rows),
             title="Beyond the search space at 0.02%: other ways to spend ~4.5k parameters",
             script="benchmarks/beyond_space.py")
    if bench.ran and not args.runs_dir:  # the same runs pack to the same bytes
        pack("placement_ceiling")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
