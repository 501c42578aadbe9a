"""What a training run is told (TrainConfig) and what it reports (TrainResult).

Field names are those of transformers' ``TrainingArguments`` / ``run_glue.py`` where one exists;
each field's ``metadata`` carries its help and its older spellings (``aliases``), which keep
working as keyword arguments, attributes, plan ``training`` keys and CLI flags.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from ..data.spec import PLAN_ALIASES, TaskSpec
from ..errors import UserError
from ..options import option

ALLOCATIONS = ("static", "dynamic")
STALL_ACTIONS = ("warn", "stop", "restart", "off")


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite (the search marks such a trial failed)."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"non-finite training loss {value} at step {step}; "
                         f"try a lower learning rate")


@dataclass
class TrainConfig(TaskSpec):
    """A training run's settings; the task fields come from TaskSpec (usually the plan's task)."""

    # ---- the schedule
    num_train_epochs: float = option(3, "training epochs", aliases=["--epochs", "--num-epochs"])
    learning_rate: float = option(5e-4, "peak learning rate (AdamW)", aliases=["--lr"])
    per_device_train_batch_size: int = option(16, "training rows per device and micro-batch",
                                              aliases=["--batch-size"])
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    seed: int = option(0, "random seed (model head, dropout, data order)")
    allocation: str = option("static", "static, or dynamic: re-score and re-allocate the budget while "
                                       "training", choices=list(ALLOCATIONS))
    output_dir: str | None = option(None, "where to write the run (default: runs/<plan name>-<UTC time>)")
    max_steps: int | None = option(None, "stop after this many optimizer steps")
    eval_steps: int | None = option(None, "evaluate every N optimizer steps (default: once per epoch)",
                                    aliases=["--eval-every"])
    warmup_ratio: float = option(0.06, "fraction of the steps with a linear warmup", aliases=["--warmup"])
    weight_decay: float = option(0.0, "AdamW weight decay (not on biases and norms)")
    lr_scheduler_type: str = option("linear", "linear, cosine, constant, ... (transformers schedules)",
                                    aliases=["--scheduler", "--lr-scheduler"])
    resume: bool = option(False, "continue from the last complete checkpoint in output_dir (same settings "
                                 "and data)")
    overwrite_output_dir: bool = option(False, "replace the run already in output_dir (without it, and without "
                                               "--resume, a folder holding a run is refused)")
    merge: bool = option(False, "also save the merged full model (merged/)")
    progress: bool = option(True, "show a progress bar")
    dynamic_every: float = option(0.2, "dynamic: fraction of an epoch between reallocations")
    group_by_length: bool = option(False, "batches of similar lengths (less padding: faster, above all on CPU)")
    max_grad_norm: float | None = option(1.0, "gradient clipping norm (None or 0: off)")
    per_device_eval_batch_size: int | None = option(None, "evaluation batch size (default: the training one)",
                                                    aliases=["--eval-batch-size"])
    save_steps: int | None = option(None, "checkpoint every N steps (default: at each evaluation)",
                                    aliases=["--save-every"])
    save_total_limit: int | None = option(2, "keep at most this many checkpoints (older ones are deleted)")
    dynamic_batches: int = option(2, "dynamic: training batches per re-scoring")
    dynamic_proxy: str | None = option(None, "dynamic: the scoring proxy (default: the proxies package's; "
                                             "'live-grad-norm': grad-norm of each module's own weights)",
                                       aliases=["--proxy"])
    device: str | None = option(None, "cpu, cuda, cuda:1 (default: cuda when available)")
    bf16: bool = option(False, "bfloat16 mixed precision (autocast; adapters and head keep fp32 weights)")
    bf16_frozen_base: bool = option(False, "with bf16: also store the frozen base in bf16 for the run instead "
                                           "of casting it in every forward (CPU benchmark: no clear gain over "
                                           "autocast)")
    fp16: bool = option(False, "float16 mixed precision with loss scaling (CUDA only)")
    gradient_checkpointing: bool = option(False, "recompute layer activations in the backward (less memory)")
    report_to: str = option("none", "where to log: none, all, tensorboard, wandb, ... (installed integrations)")
    logging_steps: int = option(50, "log the training loss every N steps")
    export_peft: bool = option(True, "write peft_adapter/ for pure-LoRA plans")
    on_stall: str | None = option(
        None, "a held-out evaluation a third into the run checks that training has left its start "
              "(the untrained model's or the labels' prior's loss) and that the metric is above chance; on a "
              "stall: warn; stop (outputs written, exit status 3); restart (from the initial adapters at a lower "
              "learning rate); off (no check). Default: warn for a run with an output folder (every more-train "
              "run), off for one without (the search's trials)", choices=list(STALL_ACTIONS))
    stall_restarts: int = option(2, "--on_stall restart: at most this many restarts")
    stall_lr_factor: float = option(0.5, "--on_stall restart: each restart multiplies the learning rate by this")

    @classmethod
    def from_plan(cls, plan, **overrides) -> "TrainConfig":
        """Defaults, then ``plan.task`` (task/data options), then ``plan.training`` hints,
        then ``overrides``; an override of None means "not given" and is skipped.  Older
        spellings (``lr``, ``epochs``, ``batch_size``, ...) are accepted everywhere."""
        values: dict[str, Any] = {}
        if plan is not None:
            for section in (plan.task or {}, plan.training or {}):
                for k, v in section.items():
                    key = canonical(k)
                    if key is not None and v is not None:
                        values[key] = v
        for k, v in overrides.items():
            key = canonical(k)
            if key is None:
                raise TypeError(f"TrainConfig has no field {k!r}")
            if v is not None:
                values[key] = v
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> "TrainConfig":
        from transformers import SchedulerType

        problems = _type_problems(self)
        if problems:  # a plan's "lr": "fast" must not reach the comparisons below
            raise UserError("invalid training settings: " + "; ".join(problems))
        self.__post_init__()  # text_columns may have been set since
        if self.allocation not in ALLOCATIONS:
            problems.append(f"allocation {self.allocation!r} must be one of {list(ALLOCATIONS)}")
        if not self.num_train_epochs or self.num_train_epochs <= 0:
            problems.append(f"epochs must be > 0, got {self.num_train_epochs}")
        if not self.learning_rate or self.learning_rate <= 0:
            problems.append(f"learning rate must be > 0, got {self.learning_rate}")
        for name in ("per_device_train_batch_size", "max_length", "gradient_accumulation_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("max_steps", "eval_steps", "save_steps", "max_train_samples",
                     "per_device_eval_batch_size", "save_total_limit"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            problems.append(f"max_grad_norm must be >= 0 (0: off), got {self.max_grad_norm}")
        if self.allocation == "dynamic" and self.dynamic_proxy is not None:
            problems += _proxy_problems(self.dynamic_proxy)
        if not 0 < self.dynamic_every:
            problems.append(f"dynamic_every must be > 0 (a fraction of an epoch), got {self.dynamic_every}")
        valid = [s.value for s in SchedulerType]
        if self.lr_scheduler_type not in valid:
            problems.append(f"scheduler {self.lr_scheduler_type!r} is not one of {valid}")
        if self.bf16 and self.fp16:
            problems.append("choose one of bf16 and fp16")
        if self.on_stall is not None and self.on_stall not in STALL_ACTIONS:
            problems.append(f"on_stall {self.on_stall!r} must be one of {list(STALL_ACTIONS)}")
        if not 0 < self.stall_lr_factor < 1:
            problems.append(f"stall_lr_factor must be in (0, 1), got {self.stall_lr_factor}")
        if self.stall_restarts < 0:
            problems.append(f"stall_restarts must be >= 0, got {self.stall_restarts}")
        if self.resume and not self.output_dir:
            problems.append("resume needs an output directory (--output_dir) holding a checkpoint")
        if problems:
            raise UserError("invalid training settings: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["text_columns"] is not None:
            d["text_columns"] = list(d["text_columns"])
        return d


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _type_problems(cfg) -> list[str]:
    """Fields whose value has the wrong type (plan ``training`` hints are not checked elsewhere)."""
    problems = []
    for f in dataclasses.fields(cfg):
        parts = str(f.type).split(" | ")
        kinds = [p for p in parts if p != "None"]
        v = getattr(cfg, f.name)
        if len(kinds) != 1 or kinds[0] not in _TYPES or (v is None and "None" in parts):
            continue
        kind = kinds[0]
        if not isinstance(v, _TYPES[kind]) or (kind != "bool" and isinstance(v, bool)):
            what = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string"}[kind]
            problems.append(f"{f.name} must be {what}, got {v!r}")
    return problems


def _proxy_problems(name: str) -> list[str]:
    from .dynamic import LIVE_GRAD_NORM

    if name == LIVE_GRAD_NORM:
        return []
    try:
        import proxies
    except ImportError:
        return [f"proxy {name!r} needs the proxies package; use {LIVE_GRAD_NORM!r}"]
    try:
        proxies.get_proxy(name)
    except ValueError as e:
        return [f"{e} (or {LIVE_GRAD_NORM!r}); pass one of them to --proxy"]
    return []


def _python_name(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


# Older spellings: the fields' CLI aliases, and the task section's (plan "name", "max_seq_length").
ALIASES = {**PLAN_ALIASES, **{_python_name(a): f.name for f in dataclasses.fields(TrainConfig)
                              for a in f.metadata.get("aliases", ())}}


def canonical(name: str) -> str | None:
    """The field name for ``name`` (a field name or an older spelling); None if unknown."""
    name = _python_name(name)
    if name in ALIASES:
        return ALIASES[name]
    return name if name in {f.name for f in dataclasses.fields(TrainConfig)} else None


def _accept_aliases(cls):
    """Older spellings as keyword arguments and as attributes (``cfg.lr is cfg.learning_rate``)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        for alias, name in ALIASES.items():
            if alias in kwargs:
                if name in kwargs:
                    raise TypeError(f"TrainConfig got both {name!r} and its alias {alias!r}")
                kwargs[name] = kwargs.pop(alias)
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    for alias, name in ALIASES.items():
        setattr(cls, alias, property(lambda self, n=name: getattr(self, n),
                                     lambda self, v, n=name: setattr(self, n, v)))
    return cls


_accept_aliases(TrainConfig)


@dataclass
class TrainResult:
    metrics: dict[str, float]  # the final evaluation
    main_metric: str
    score: float  # metrics[main_metric]
    history: list[dict[str, Any]]  # every evaluation, with "step"
    steps: int
    train_time_s: float
    step_time_s: float  # mean seconds per optimizer step (forward + backward + update)
    peak_memory_bytes: int
    trainable_params: int  # enabled adapters + shortcuts + task head
    output_dir: str | None = None
    enable_counts: dict[str, int] | None = None  # dynamic: steps each candidate was on
    adapter_params: int = 0  # enabled adapters + shortcuts (the budget's unit)
    peak_memory_kind: str = "rss"  # "rss" (process resident set, CPU) or "cuda_allocated"
    merge_report: dict[str, Any] | None = None
    peft_dir: str | None = None
    step_cpu_s: float = float("nan")  # as step_time_s, in this process's CPU seconds
    stall: dict[str, Any] | None = None  # the stall the final attempt met (nas.train.stall); None: healthy
    stall_check: dict[str, Any] | None = None  # the start, the check step and every attempt; None: no check

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
