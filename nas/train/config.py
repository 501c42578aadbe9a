"""What a training run is told (TrainConfig, read from a plan and overrides) and what it reports
(TrainResult); the settings a resume must match."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..data.spec import TaskSpec
from ..errors import UserError
from ..options import option
from ..plan import Plan


CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1
ALLOCATIONS = ("static", "dynamic")

# Settings that must match to resume a run.
RESUME_KEYS = ("epochs", "lr", "batch_size", "max_length", "seed", "allocation", "max_steps",
                "eval_every", "warmup_ratio", "weight_decay", "scheduler", "dynamic_every",
                "dynamic_batches", "dynamic_proxy", "max_grad_norm")


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite (the search marks such a trial failed)."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"non-finite training loss {value} at step {step}; "
                         f"try a lower learning rate")


@dataclass
class TrainConfig(TaskSpec):
    """A training run's settings; the task fields come from TaskSpec (usually the plan's task)."""

    epochs: float = option(3, "epochs")
    lr: float = option(5e-4, "learning rate")
    batch_size: int = option(16, "training batch size")
    seed: int = option(0, "seed of the task head, the order of batches and dropout")
    allocation: str = option("static", "static: the plan's modules stay on; dynamic: re-score and reallocate "
                                   "during training", choices=list(ALLOCATIONS))
    output_dir: str | None = option(None, "where to write (default: runs/<plan name>)")
    max_steps: int | None = option(None, "stop after this many optimizer steps")
    eval_every: int | None = option(None, "evaluate every N steps (default: once per epoch)")
    warmup_ratio: float = option(0.06, "part of the steps spent warming the learning rate up")
    weight_decay: float = option(0.0, "AdamW weight decay")
    scheduler: str = option("linear", "linear, cosine, constant, ... (transformers schedules)")
    resume: bool = option(False, "continue from the checkpoint in --output-dir")
    merge: bool = option(False, "also save the merged full model")
    progress: bool = True
    dynamic_every: float = option(0.2, "dynamic: re-score every this fraction of an epoch")
    group_by_length: bool = option(False, "batch rows of similar lengths (less padding; faster, above all on CPU)")
    # ---- loop details
    max_grad_norm: float | None = 1.0
    eval_batch_size: int | None = None  # None = batch_size
    save_every: int | None = None  # checkpoint every N steps; None = at each evaluation
    dynamic_batches: int = 2  # training batches per re-scoring
    dynamic_proxy: str | None = option(None, "dynamic: the scoring proxy (default: the proxies package's "
                                         "default; 'live-grad-norm': grad-norm of each module's own weights)",
                                   flags=["--proxy"])
    device: str | None = option(None, "cpu, cuda, cuda:1 (default: cuda when available)")
    export_peft: bool = True  # write peft_adapter/ for pure-LoRA plans

    @classmethod
    def from_plan(cls, plan: Plan | None, **overrides) -> "TrainConfig":
        """Defaults, then ``plan.task`` (task/data options), then ``plan.training`` hints,
        then ``overrides``; an override of None means "not given" and is skipped."""
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        if plan is not None:
            values.update(TaskSpec.values_from_plan(plan.task))
            for k, v in (plan.training or {}).items():
                key = _TRAINING_ALIASES.get(k, k)
                if key in names and v is not None:
                    values[key] = v
        for k, v in overrides.items():
            if k not in names:
                raise TypeError(f"TrainConfig has no field {k!r}")
            if v is not None:
                values[k] = v
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> "TrainConfig":
        problems = []
        from transformers import SchedulerType

        self.__post_init__()  # text_columns may have been set since
        if self.allocation not in ALLOCATIONS:
            problems.append(f"allocation {self.allocation!r} must be one of {list(ALLOCATIONS)}")
        if not self.epochs or self.epochs <= 0:
            problems.append(f"epochs must be > 0, got {self.epochs}")
        if not self.lr or self.lr <= 0:
            problems.append(f"learning rate must be > 0, got {self.lr}")
        for name in ("batch_size", "max_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("max_steps", "eval_every", "save_every", "max_train_samples", "eval_batch_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 < self.dynamic_every:
            problems.append(f"dynamic_every must be > 0 (a fraction of an epoch), got {self.dynamic_every}")
        valid = [s.value for s in SchedulerType]
        if self.scheduler not in valid:
            problems.append(f"scheduler {self.scheduler!r} is not one of {valid}")
        if self.resume and not self.output_dir:
            problems.append("resume needs an output directory (--output-dir) holding a checkpoint")
        if problems:
            raise UserError("invalid training settings: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["text_columns"] is not None:
            d["text_columns"] = list(d["text_columns"])
        return d


_TRAINING_ALIASES = {"learning_rate": "lr", "num_epochs": "epochs", "num_train_epochs": "epochs",
                     "lr_scheduler": "scheduler", "lr_scheduler_type": "scheduler",
                     "per_device_train_batch_size": "batch_size", "max_seq_length": "max_length",
                     "warmup": "warmup_ratio"}


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
