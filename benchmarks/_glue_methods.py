"""The methods of benchmarks/glue.py: what each one trains, and how that becomes a Trainer.

A method is a row of ``METHODS``: a name and a builder ``build(ctx, variant) -> Spec``.  A
``Spec`` is a JSON-able description of *what is trained*, one of three kinds:

    head   only the task head (no adapters)
    peft   a Hugging Face PEFT LoRA model (rank, alpha, target modules)
    plan   a more-nas plan (nas.Plan: modules + shortcuts, a budget, static/dynamic allocation)

Runs are keyed by the Spec's content (``Spec.digest``), not by the method's name, so two
methods that end up training the same thing (e.g. the PEFT ranks matched to two budgets that
both round to r=1) share one run.  ``build_trainer`` turns a Spec into a ``nas.train.Trainer``:
every method, PEFT included, trains in the same loop (as benchmarks/trainer_vs_peft.py does).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from nas import Plan
from nas.inject import HEAD_NAMES
from nas.plan import atomic_write_text

MODEL = "minilm"
SURM_CHOICES = {  # the SURM kinds on query,value (square 384x384 projections)
    "circulant": {"type": "circulant"},
    "kronecker": {"type": "kronecker", "rank": 8},
    "toeplitz": {"type": "toeplitz"},
    "ldr": {"type": "ldr", "rank": 1},
}
HETERO_SPACE = "heterolora"  # rank-8 LoRA on every projection + the four shortcuts
HETERO_PROXY = "grad-norm"  # static scoring (proxies package, non-degenerate scoring init)
HETERO_DYNAMIC_PROXY = "live-grad-norm"  # dynamic re-scoring on the live weights (HeteroLoRA)
HETERO_FRACTION = 0.25  # budget = 25% of the pool's parameters
HETERO_BATCHES = 4  # training batches for the static scoring
PEFT_MAX_RANK = 64
PEFT_TARGETS = {"qv": ("q", "v"), "attn": ("q", "k", "v", "o")}


@dataclass
class Protocol:
    """Every setting that decides a result (the run keys hash the ones each phase uses)."""

    name: str
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: float
    lr_grid: tuple[float, ...]
    batch_size: int
    max_length: int
    train_rows: dict[str, int | None]  # task -> fixed training subset (data_seed 0); None: all
    holdout: float  # part of TRAIN held out for lr selection (and by the search)
    select_steps: int  # optimizer steps of an lr-selection run
    select_eval_rows: int  # held-out rows that score it
    budgets: tuple[str, ...]
    search_trials: int
    search_steps: int
    search_evals: int
    search_timeout_s: float | None = None  # wall-clock limit of a search's trial stage
    final_max_steps: int | None = None  # (quick) cap the final runs
    eval_rows: int | None = None  # (quick) dev subset; None: the full dev set
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    scheduler: str = "linear"
    group_by_length: bool = True  # batches of similar lengths, for every method (and the search)
    # The task whose held-out TRAIN picks each method's lr (and variant) for every task; None: each
    # task picks its own.  One cheap task keeps selection affordable where long-sequence tasks
    # (RTE, MRPC) would cost more to select on than to train.
    select_task: str | None = None

    def selection_task(self, task: str) -> str:
        return self.select_task or task

    def data_settings(self, task: str) -> dict[str, Any]:
        return {"task": task, "rows": self.train_rows.get(task), "max_length": self.max_length,
                "eval_rows": self.eval_rows}

    def phase_settings(self, task: str, phase: str) -> dict[str, Any]:
        common = {**self.data_settings(task), "batch_size": self.batch_size,
                  "warmup": self.warmup_ratio, "wd": self.weight_decay, "sched": self.scheduler,
                  "group_by_length": self.group_by_length}
        if phase == "select":
            return {**common, "holdout": self.holdout, "steps": self.select_steps,
                    "holdout_rows": self.select_eval_rows}
        return {**common, "epochs": self.epochs, "max_steps": self.final_max_steps}

    def search_settings(self, task: str) -> dict[str, Any]:
        return {**self.data_settings(task), "batch_size": self.batch_size, "holdout": self.holdout,
                "holdout_rows": self.select_eval_rows, "trials": self.search_trials,
                "steps": self.search_steps, "evals": self.search_evals, "epochs": self.epochs,
                "group_by_length": self.group_by_length,
                **({"timeout_s": self.search_timeout_s} if self.search_timeout_s else {})}


@dataclass
class TaskCtx:
    """One task, loaded once: data, the held-out split, the model template and where runs go."""

    task: str
    data: Any  # nas.data.TaskData: the training subset + dev
    sel: Any  # data.holdout(...): train = the rest of train, eval = held-out TRAIN rows
    tokenizer: Any
    template: torch.nn.Module  # the packaged MiniLM with a head; never trained
    layout: Any
    base_params: int
    proto: Protocol
    runs_dir: Path  # glue_runs/<task>
    device: str | None = None
    data_dir: str | None = None


@dataclass
class Spec:
    kind: str  # head | peft | plan
    label: str  # short, readable, derived from the content
    payload: dict[str, Any]  # the identity: what is trained
    info: dict[str, Any] = field(default_factory=dict)  # not identity: search time, matched rank...

    @property
    def digest(self) -> str:
        blob = json.dumps({"kind": self.kind, "payload": self.payload}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # baseline | peft | ours | heterolora | search | peft-matched
    build: Callable[[TaskCtx, str], Spec]
    variants: tuple[str, ...] = ("",)  # picked among on the held-out split (with the lr)
    cost: float = 1.0  # step cost relative to LoRA r=8 (for the time estimate only)
    searched: bool = False  # builds by running more-search (an expensive build)


# ---- models -------------------------------------------------------------------------------
def fresh_model(ctx: TaskCtx, seed: int) -> torch.nn.Module:
    """A copy of the template with a task head initialised from ``seed`` (the only weights
    ``load_model`` initialises: every method with the same seed starts from the same head)."""
    model = copy.deepcopy(ctx.template)
    g = torch.Generator().manual_seed(seed)
    std = getattr(model.config, "initializer_range", 0.02)
    with torch.no_grad():
        for name in HEAD_NAMES:
            head = getattr(model, name, None)
            for mod in ([head] if isinstance(head, torch.nn.Linear) else
                        [m for m in (head.modules() if head is not None else []) if isinstance(m, torch.nn.Linear)]):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * std)
                if mod.bias is not None:
                    mod.bias.zero_()
    return model


def head_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, c in model.named_children() if n in HEAD_NAMES for p in c.parameters())


# ---- specs --------------------------------------------------------------------------------
def plan_spec(label: str, modules: dict, shortcuts: dict | None = None, budget: int | None = None,
              allocation: str = "static", dynamic_proxy: str | None = None, **info) -> Spec:
    plan = {"schema_version": 1, "model": {"name_or_path": MODEL}, "modules": modules,
            "shortcuts": shortcuts or {}}
    if budget is not None:
        plan["budget"] = {"params": int(budget), "counts": "adapters+shortcuts"}
    payload = {"plan": plan, "allocation": allocation}
    if dynamic_proxy:
        payload["dynamic_proxy"] = dynamic_proxy
    return Spec("plan", label, payload, info)


def spec_from_plan(label: str, plan: Plan, **info) -> Spec:
    return plan_spec(label, plan.modules, plan.shortcuts, (plan.budget or {}).get("params"),
                     **{"plan_params": plan.trainable_params, **info})


def candidates_plan(ctx: TaskCtx, candidates) -> Plan:
    return Plan.from_candidates(candidates, ctx.layout, model={"name_or_path": MODEL})


def uniform(choice: dict, roles: tuple[str, ...], label: str) -> Callable[[TaskCtx, str], Spec]:
    """The same adapter on every module of the given roles, as a Plan."""
    def build(ctx: TaskCtx, variant: str = "") -> Spec:
        from search_spaces import SearchSpace

        cands = SearchSpace(name=label, choices=[choice], roles=list(roles)).candidates(ctx.layout)
        plan = candidates_plan(ctx, cands)
        return spec_from_plan(label, plan)
    return build


def surm(ctx: TaskCtx, variant: str) -> Spec:
    return uniform(SURM_CHOICES[variant], ("q", "v"), f"surm-{variant}-qv")(ctx, variant)


def head_only(ctx: TaskCtx, variant: str = "") -> Spec:
    return Spec("head", "head-only", {"head": list(HEAD_NAMES)})


def peft_targets(ctx: TaskCtx, roles: tuple[str, ...]) -> list[str]:
    return [m.name for m in ctx.layout.modules if m.role in roles]


def peft_lora_params(ctx: TaskCtx, rank: int, roles: tuple[str, ...]) -> int:
    return sum(rank * (m.d_in + m.d_out) for m in ctx.layout.modules if m.role in roles)


def peft_spec(ctx: TaskCtx, rank: int, where: str, **info) -> Spec:
    return Spec("peft", f"peft-lora-{where}-r{rank}",
                {"rank": rank, "alpha": 2 * rank, "dropout": 0.0,
                 "targets": peft_targets(ctx, PEFT_TARGETS[where])},
                {"adapter_params": peft_lora_params(ctx, rank, PEFT_TARGETS[where]), **info})


def peft_lora(rank: int, where: str = "qv") -> Callable[[TaskCtx, str], Spec]:
    return lambda ctx, variant="": peft_spec(ctx, rank, where)


def match_peft_rank(ctx: TaskCtx, params: int) -> tuple[int, str]:
    """The uniform PEFT LoRA (rank on query,value or on all attention projections) whose
    parameter count is closest to ``params``; ties: query,value, then the lower rank.  (On
    MiniLM, all-attention rank r has the size of query,value rank 2r, so the all-attention
    option only wins beyond query,value's largest rank.)"""
    options = [(abs(peft_lora_params(ctx, r, roles) - params), i, r, where)
               for i, (where, roles) in enumerate(PEFT_TARGETS.items())
               for r in range(1, PEFT_MAX_RANK + 1)]
    _, _, rank, where = min(options, key=lambda o: (o[0], o[1], o[2]))
    return rank, where


# ---- HeteroLoRA ----------------------------------------------------------------------------
def hetero_pool(ctx: TaskCtx):
    from search_spaces import SPACES

    cands = SPACES[HETERO_SPACE].candidates(ctx.layout)
    return cands, int(HETERO_FRACTION * sum(c.params for c in cands))


def train_batches(data, n: int, batch_size: int, seed: int = 0) -> list[dict]:
    """``n`` seeded training batches (as the search's proxy stage draws them)."""
    rng = np.random.default_rng(seed)
    k = min(len(data.train), n * batch_size)
    idx = rng.permutation(len(data.train))[:k].tolist()
    rows = data.train.select(idx)
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels") if c in rows.column_names]
    rows = [{c: r[c] for c in cols} for r in rows]
    collate = data.collator()
    return [collate(rows[i:i + batch_size]) for i in range(0, k, batch_size)]


def heterolora_static(ctx: TaskCtx, variant: str = "") -> Spec:
    """grad-norm scores of the pool on a few batches of the training part of the held-out
    split; the top set within 25% of the pool's parameters (proxies.allocate).  Cached."""
    import proxies

    path = ctx.runs_dir / "plans" / "heterolora_static.json"
    settings = {**ctx.proto.data_settings(ctx.task), "holdout": ctx.proto.holdout,
                "batches": HETERO_BATCHES, "batch_size": ctx.proto.batch_size, "proxy": HETERO_PROXY,
                "fraction": HETERO_FRACTION}
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings:
            return spec_from_plan("heterolora-static", Plan.from_dict(saved["plan"]),
                                  scoring_s=saved.get("scoring_s"))
    cands, budget = hetero_pool(ctx)
    model = fresh_model(ctx, 0)
    t0 = time.perf_counter()
    plan = proxies.static_plan(model, ctx.layout, HETERO_SPACE,
                               train_batches(ctx.sel, HETERO_BATCHES, ctx.proto.batch_size),
                               budget, proxy=HETERO_PROXY, seed=0, model={"name_or_path": MODEL})
    seconds = time.perf_counter() - t0
    atomic_write_text(path, json.dumps({"settings": settings, "scoring_s": seconds,
                                        "plan": plan.to_dict()}, indent=1))
    return spec_from_plan("heterolora-static", plan, scoring_s=seconds)


def heterolora_dynamic(ctx: TaskCtx, variant: str = "") -> Spec:
    """The whole pool is built; every 1/5 epoch the top set within the same 25% is enabled."""
    cands, budget = hetero_pool(ctx)
    plan = candidates_plan(ctx, cands)
    return plan_spec("heterolora-dynamic", plan.modules, plan.shortcuts, budget,
                     allocation="dynamic", dynamic_proxy=HETERO_DYNAMIC_PROXY,
                     pool_params=plan.trainable_params)


# ---- more-search ---------------------------------------------------------------------------
def budget_tag(budget: str) -> str:
    return budget.replace("%", "pct")


def search_dir(ctx: TaskCtx, budget: str) -> Path:
    return ctx.runs_dir / f"search_{budget}"


def _study_seconds(out: Path) -> float:
    """Summed durations of the finished (complete or pruned) trials of the study in ``out``
    (a resumed search's wall time is lost). A trial cut off by an interruption is failed on
    resume, and its span would count the whole time the run was down, so it is left out."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    total = 0.0
    for name in optuna.get_all_study_names(storage):
        for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False,
                                                                             states=finished):
            if t.datetime_start and t.datetime_complete:
                total += (t.datetime_complete - t.datetime_start).total_seconds()
    return total


def run_or_load_search(ctx: TaskCtx, budget: str) -> dict[str, Any]:
    """more-search on the task (trials score on held-out TRAIN, never dev), resumable:
    the finished result is ``search_<budget>/glue_search.json``; an interrupted one resumes
    its Optuna journal."""
    from nas.search import SearchConfig, run_search

    out = search_dir(ctx, budget)
    done, settings_file = out / "glue_search.json", out / "glue_search_settings.json"
    settings = {**ctx.proto.search_settings(ctx.task), "budget": budget}
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        raise SystemExit(f"{out} holds a search with other settings; remove it or use another "
                         f"--runs-dir")
    if done.is_file():
        return json.loads(done.read_text())
    resumed = (out / "study.journal").is_file()
    atomic_write_text(settings_file, json.dumps(settings, indent=1))
    p = ctx.proto
    cfg = SearchConfig(task=ctx.task, budget=budget, output_dir=str(out), n_trials=p.search_trials,
                       trial_steps=p.search_steps, n_evals=p.search_evals, holdout=p.holdout,
                       timeout_s=p.search_timeout_s, group_by_length=p.group_by_length,
                       max_eval_samples=p.select_eval_rows, batch_size=p.batch_size,
                       max_length=p.max_length, epochs=p.epochs, seed=0, progress=False,
                       resume=True, data_dir=ctx.data_dir)
    t0 = time.perf_counter()
    res = run_search(cfg, model=fresh_model(ctx, 0), tokenizer=ctx.tokenizer, data=ctx.data)
    wall = time.perf_counter() - t0
    seconds = wall
    if resumed:  # this process saw only part of it: setup + proxy + every trial's duration
        st = res.stage_seconds
        seconds = st.get("setup", 0.0) + st.get("proxy", 0.0) + _study_seconds(out)
    record = {"budget": budget, "plan": res.plan.to_dict(), "search_time_s": seconds,
              "wall_s_this_process": wall, "resumed": resumed, "best_holdout": res.best_value,
              "trials": {"complete": res.n_complete, "pruned": res.n_pruned, "failed": res.n_failed},
              "stage_seconds": res.stage_seconds, "settings": settings}
    atomic_write_text(done, json.dumps(record, indent=1, default=str))
    return record


def more_search(budget: str) -> Callable[[TaskCtx, str], Spec]:
    def build(ctx: TaskCtx, variant: str = "") -> Spec:
        rec = run_or_load_search(ctx, budget)
        plan = Plan.from_dict(rec["plan"])
        kinds = sorted({c["type"] for c in plan.modules.values()} | ({"shortcut"} if plan.shortcuts else set()))
        return spec_from_plan(f"search-{budget_tag(budget)}", plan, search_time_s=rec["search_time_s"],
                              best_holdout=rec["best_holdout"], kinds=kinds,
                              search_dir=str(search_dir(ctx, budget)))
    return build


def peft_matched(budget: str) -> Callable[[TaskCtx, str], Spec]:
    """PEFT LoRA with the uniform rank whose size is closest to the searched plan's."""
    def build(ctx: TaskCtx, variant: str = "") -> Spec:
        plan_params = more_search(budget)(ctx, "").info["plan_params"]
        rank, where = match_peft_rank(ctx, plan_params)
        return peft_spec(ctx, rank, where, matched_to=plan_params, budget=budget)
    return build


# ---- the table ----------------------------------------------------------------------------
BUDGETS = ("0.02%", "0.05%", "0.1%", "0.3%")


def make_methods(budgets: tuple[str, ...] = BUDGETS) -> list[Method]:
    return [
        Method("head-only", "baseline", head_only, cost=0.45),
        Method("peft-lora-r8", "peft", peft_lora(8, "qv")),
        Method("lora-r8", "ours", uniform({"type": "lora", "rank": 8}, ("q", "v"), "lora-qv-r8")),
        Method("more-N4r4", "ours", uniform({"type": "more", "nblocks": 4, "rank": 4}, ("q", "k", "v"),
                                            "more-qkv-N4r4"), cost=1.1),
        Method("surm-best", "ours", surm, variants=tuple(SURM_CHOICES), cost=1.1),
        Method("heterolora-static", "heterolora", heterolora_static, cost=1.15),
        Method("heterolora-dynamic", "heterolora", heterolora_dynamic, cost=1.3),
        *[Method(f"more-search@{b}", "search", more_search(b), cost=1.1, searched=True) for b in budgets],
        *[Method(f"peft-lora@{b}", "peft-matched", peft_matched(b), searched=True) for b in budgets],
    ]


# ---- a Spec -> a Trainer --------------------------------------------------------------------
def build_trainer(spec: Spec, ctx: TaskCtx, data, cfg):
    """The model for ``spec`` (head initialised from ``cfg.seed``) in nas.train's loop."""
    from transformers import set_seed

    from nas.train.loop import Trainer, prepare

    set_seed(cfg.seed)
    model = fresh_model(ctx, cfg.seed)
    if spec.kind == "head":
        for name, p in model.named_parameters():
            p.requires_grad_(name.split(".")[0] in HEAD_NAMES)
        return Trainer(model, data, cfg)
    if spec.kind == "peft":  # as benchmarks/trainer_vs_peft.py's PEFT baseline, any rank/targets
        from peft import LoraConfig, get_peft_model

        pl = spec.payload
        model = get_peft_model(model, LoraConfig(
            r=pl["rank"], lora_alpha=pl["alpha"], lora_dropout=pl["dropout"],
            target_modules=list(pl["targets"]), modules_to_save=list(HEAD_NAMES[:1]),
            task_type="SEQ_CLS"))
        return Trainer(model, data, cfg)
    if spec.kind == "plan":
        return prepare(Plan.from_dict(spec.payload["plan"]), cfg, model=model, data=data)
    raise ValueError(f"unknown spec kind {spec.kind!r}")


def train_config(spec: Spec, proto: Protocol, *, lr: float, seed: int, select: bool,
                 device: str | None):
    from nas.train import TrainConfig

    return TrainConfig(
        epochs=proto.epochs, lr=lr, batch_size=proto.batch_size, max_length=proto.max_length,
        seed=seed, max_steps=proto.select_steps if select else proto.final_max_steps,
        eval_every=proto.select_steps if select else None, warmup_ratio=proto.warmup_ratio,
        weight_decay=proto.weight_decay, scheduler=proto.scheduler,
        allocation=spec.payload.get("allocation", "static"),
        dynamic_proxy=spec.payload.get("dynamic_proxy"), progress=False, device=device,
        group_by_length=proto.group_by_length,
        export_peft=False)


def longest_rows(data, k: int) -> list[int]:
    lens = [len(x) for x in data.train["input_ids"]]
    return sorted(range(len(lens)), key=lambda i: -lens[i])[:k]


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop lines) for the block."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def step_tensor_peak(trainer) -> int | None:
    """Peak tensor bytes of one steady-state training step (forward + backward + AdamW) on
    the longest training batch, from the torch profiler's memory timeline (CPU only), as
    benchmarks/trainer_vs_peft.py measures it.  Runs after training: it takes 2 extra steps."""
    import os
    import tempfile
    import warnings

    from torch.profiler import ProfilerActivity, profile

    if trainer.device.type != "cpu":
        return None
    rows = longest_rows(trainer.data, trainer.cfg.batch_size)
    try:
        trainer.train_step(rows)  # warm-up: AdamW state exists from here on
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                      record_shapes=True, with_stack=True) as prof:
            trainer.train_step(rows)
        with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = os.path.join(d, "timeline.json")
            prof.export_memory_timeline(path, device="cpu")
            _, sizes = json.load(open(path))
        return int(max(sum(s) for s in sizes))
    except Exception as e:  # noqa: BLE001 - memory is a side measurement; never lose the run
        print(f"(memory profile failed: {type(e).__name__}: {e})")
        return None


def finite(x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return -math.inf
    return x if math.isfinite(x) else -math.inf
