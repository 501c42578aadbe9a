"""The methods of benchmarks/glue.py: the protocol, what each method trains (a Spec), the
fixed-architecture builders.  Searched methods and the method tables: _glue_search.py; a Spec
-> a Trainer: _glue_train.py.

A method is a row of ``make_methods()``: a name and a builder ``build(ctx, variant) -> Spec``.  A
``Spec`` is a JSON-able description of *what is trained*, one of three kinds:

    head   only the task head (no adapters)
    peft   a Hugging Face PEFT LoRA model (rank, alpha, target modules)
    plan   a more-nas plan (nas.Plan: modules + shortcuts, a budget, static/dynamic allocation)

Runs are keyed by the Spec's content (``Spec.digest``), not by the method's name, so two
methods that end up training the same thing (e.g. the PEFT ranks matched to two budgets that
both round to r=1) share one run.  Every method, PEFT included, trains in nas.train's loop.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from nas import Plan
from search_spaces.anatomy import HEAD_NAMES, head_param_count
from nas.io import atomic_write_text

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
PEFT_TARGETS = {"qv": ("q", "v"), "attn": ("q", "k", "v", "o"), "vo": ("v", "o")}
# The placements a size-matched PEFT baseline may take (value,output: a diagnostic of the search vs
# uniform LoRA baselines comparison).
MATCHED_WHERES = ("qv", "attn")


@dataclass
class Protocol:
    """Every setting that decides a result (the run keys hash the ones each phase uses)."""

    name: str
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: float  # of a final run, unless task_epochs names the task
    lr_grid: tuple[float, ...]
    batch_size: int
    max_length: int
    train_rows: dict[str, int | None]  # task -> fixed training subset (data_seed 0); None: all
    holdout: float  # part of TRAIN held out for lr selection (and by the search)
    # Optimizer steps of an lr-selection run; None: as long as a final run (its epochs, on the
    # part of train not held out), so an lr that only pays off late, or stalls late, is seen.
    select_steps: int | None
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
    task_epochs: dict[str, float] = field(default_factory=dict)  # task -> epochs of its final runs
    pooling: str = "cls"  # what every method's task head reads (nas.heads); the searches' too
    model: str = MODEL  # the packaged model every method trains and the searches search (nas.models)

    def _keyed(self) -> dict[str, Any]:  # in the run keys only when not the defaults (older runs' keys)
        return {**({} if self.pooling == "cls" else {"pooling": self.pooling}),
                **({} if self.model == MODEL else {"model": self.model})}

    def epochs_for(self, task: str) -> float:
        return self.task_epochs.get(task, self.epochs)

    def selection_task(self, task: str) -> str:
        return self.select_task or task

    def select_length(self) -> str:
        return f"{self.select_steps} steps" if self.select_steps else "a final run's length"

    def data_settings(self, task: str) -> dict[str, Any]:
        return {"task": task, "rows": self.train_rows.get(task), "max_length": self.max_length,
                "eval_rows": self.eval_rows}

    def phase_settings(self, task: str, phase: str) -> dict[str, Any]:
        common = {**self.data_settings(task), **self._keyed(), "batch_size": self.batch_size,
                  "warmup": self.warmup_ratio, "wd": self.weight_decay, "sched": self.scheduler,
                  "group_by_length": self.group_by_length}
        if phase == "select":
            return {**common, "holdout": self.holdout, "steps": self.select_steps,
                    "holdout_rows": self.select_eval_rows,
                    **({} if self.select_steps else {"epochs": self.epochs_for(task)})}
        return {**common, "epochs": self.epochs_for(task), "max_steps": self.final_max_steps}

    def search_settings(self, task: str) -> dict[str, Any]:
        return {**self.data_settings(task), **self._keyed(), "batch_size": self.batch_size, "holdout": self.holdout,
                "holdout_rows": self.select_eval_rows, "trials": self.search_trials,
                "steps": self.search_steps, "evals": self.search_evals, "epochs": self.epochs_for(task),
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
    runs_dir: Path  # <the runs folder>/<task>
    device: str | None = None
    data_dir: str | None = None


class NotApplicable(ValueError):
    """A method that has no run on this task: a baseline sized to a plan too small for it."""


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
    search: str | None = None  # searched: the folder (under runs/<task>/) of the search it needs
    tasks: tuple[str, ...] | None = None  # the tasks it runs on (None: every task of the protocol)

    def runs_on(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


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
    return head_param_count(model)


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


def lora_ranks(spec: Spec | None) -> dict[str, int] | None:
    """{module: rank} of a spec that trains plain LoRA (alpha = 2 x rank) and nothing else, so a
    plan and a PEFT baseline with the same adapters compare equal; else None."""
    if spec is None or spec.kind not in ("peft", "plan"):
        return None
    if spec.kind == "peft":
        cfg = spec.payload
        return {t: cfg["rank"] for t in cfg["targets"]} if cfg["alpha"] == 2 * cfg["rank"] else None
    plan = spec.payload["plan"]
    mods = plan.get("modules") or {}
    if plan.get("shortcuts") or not mods or any(
            c.get("type") != "lora" or c.get("alpha") not in (None, 2 * c.get("rank", 0)) for c in mods.values()):
        return None
    return {name: c["rank"] for name, c in mods.items()}


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


def peft_spec(ctx: TaskCtx, rank: int, where: str, targets: list[str] | None = None, **info) -> Spec:
    """PEFT LoRA of ``rank`` on the roles PEFT_TARGETS[where], or on the named ``targets``."""
    if targets is None:
        targets = peft_targets(ctx, PEFT_TARGETS[where])
    size = {m.name: m.d_in + m.d_out for m in ctx.layout.modules}
    return Spec("peft", f"peft-lora-{where}-r{rank}",
                {"rank": rank, "alpha": 2 * rank, "dropout": 0.0, "targets": list(targets)},
                {"adapter_params": rank * sum(size[t] for t in targets), **info})


def peft_lora(rank: int, where: str = "qv") -> Callable[[TaskCtx, str], Spec]:
    return lambda ctx, variant="": peft_spec(ctx, rank, where)


def match_peft_rank(ctx: TaskCtx, params: int, wheres: tuple[str, ...] = MATCHED_WHERES
                    ) -> tuple[int, str]:
    """The uniform PEFT LoRA (rank on query,value or on all attention projections) whose
    parameter count is closest to ``params``; ties: query,value, then the lower rank.  (On
    MiniLM, all-attention rank r has the size of query,value rank 2r, so the all-attention
    option only wins beyond query,value's largest rank.)  ``wheres`` limits the placements."""
    options = [(abs(peft_lora_params(ctx, r, roles) - params), i, r, where)
               for i, (where, roles) in enumerate(PEFT_TARGETS.items()) if where in wheres
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
    from nas.static import static_plan

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
    plan = static_plan(model, ctx.layout, HETERO_SPACE,
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
