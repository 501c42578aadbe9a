"""What a training run is told (TrainConfig) and what it reports (TrainResult).

Field names are those of transformers' ``TrainingArguments`` / ``run_glue.py`` where one exists;
each field's ``metadata`` carries its help and its older spellings (``aliases``), which keep
working as keyword arguments, attributes, plan ``training`` keys and CLI flags.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError

ALLOCATIONS = ("static", "dynamic")


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite (the search marks such a trial failed)."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"non-finite training loss {value} at step {step}; "
                         f"try a lower learning rate")


def _f(default, help: str, *aliases: str, **kw):
    return field(default=default, metadata={"help": help, "aliases": list(aliases)}, **kw)


@dataclass
class TrainConfig:
    # ---- the schedule
    num_train_epochs: float = _f(3, "training epochs", "--epochs", "--num-epochs")
    learning_rate: float = _f(5e-4, "peak learning rate (AdamW)", "--lr")
    per_device_train_batch_size: int = _f(16, "training rows per device and micro-batch", "--batch-size")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    max_length: int = _f(128, "max tokens per example", "--max-seq-length")
    seed: int = _f(0, "random seed (model head, dropout, data order)")
    allocation: str = _f("static", "static, or dynamic: re-score and re-allocate the budget while training")
    output_dir: str | None = _f(None, "where to write the run (checkpoints, adapters, metrics)")
    max_steps: int | None = _f(None, "stop after this many optimizer steps")
    eval_steps: int | None = _f(None, "evaluate every N optimizer steps (default: once per epoch)",
                                "--eval-every")
    warmup_ratio: float = _f(0.06, "fraction of the steps with a linear warmup", "--warmup")
    weight_decay: float = _f(0.0, "AdamW weight decay (not on biases and norms)")
    lr_scheduler_type: str = _f("linear", "linear, cosine, constant, ... (transformers schedules)",
                                "--scheduler", "--lr-scheduler")
    resume: bool = _f(False, "continue from the last checkpoint in output_dir (same settings and data)")
    merge: bool = _f(False, "also save the merged full model (merged/)")
    progress: bool = _f(True, "show a progress bar")
    dynamic_every: float = _f(0.2, "dynamic: fraction of an epoch between reallocations")
    group_by_length: bool = _f(False, "batches of similar lengths (less padding: faster, above all on CPU)")
    max_grad_norm: float | None = _f(1.0, "gradient clipping norm (None or 0: off)")
    per_device_eval_batch_size: int | None = _f(None, "evaluation batch size (default: the training one)",
                                                "--eval-batch-size")
    save_steps: int | None = _f(None, "checkpoint every N steps (default: at each evaluation)", "--save-every")
    save_total_limit: int | None = _f(2, "keep at most this many checkpoints (older ones are deleted)")
    dynamic_batches: int = _f(2, "dynamic: training batches per re-scoring")
    dynamic_proxy: str | None = _f(None, "dynamic: the scoring proxy (default: the proxies package's; "
                                         "'live-grad-norm': grad-norm of each module's own weights)", "--proxy")
    device: str | None = _f(None, "cpu, cuda, cuda:1 (default: cuda when available)")
    bf16: bool = _f(False, "bfloat16 mixed precision (autocast; adapters and head keep fp32 weights)")
    bf16_frozen_base: bool = _f(False, "with bf16: also store the frozen base in bf16 for the run instead "
                                       "of casting it in every forward (CPU benchmark: no clear gain over autocast)")
    fp16: bool = _f(False, "float16 mixed precision with loss scaling (CUDA only)")
    gradient_checkpointing: bool = _f(False, "recompute layer activations in the backward (less memory)")
    report_to: str = _f("none", "where to log: none, all, tensorboard, wandb, ... (installed integrations)")
    logging_steps: int = _f(50, "log the training loss every N steps")
    export_peft: bool = _f(True, "write peft_adapter/ for pure-LoRA plans")
    # ---- the task (usually from plan.task; see nas.data.load_task)
    task: str | None = _f(None, "GLUE task name or sst2-sample", "--name")
    data_dir: str | None = _f(None, "local GLUE folder (<dir>/MRPC/train.tsv, ...)")
    train_file: str | None = _f(None, "CSV, TSV or JSON Lines")
    validation_file: str | None = _f(None, "CSV, TSV or JSON Lines (default: hold out 10% of train)")
    text_columns: tuple[str, ...] | None = _f(None, "one or two comma-separated text columns")
    label_column: str | None = _f(None, "the label column")
    task_type: str | None = _f(None, "classification, regression or causal_lm")
    num_labels: int | None = _f(None, "classes of the task head")
    max_train_samples: int | None = _f(None, "train on a fixed random subset")
    max_eval_samples: int | None = _f(None, "evaluate on a fixed random subset")
    data_seed: int = _f(0, "seed of the data subsets")

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

        problems = []
        if isinstance(self.text_columns, str):
            self.text_columns = tuple(c.strip() for c in self.text_columns.split(",") if c.strip())
        elif self.text_columns is not None:
            self.text_columns = tuple(self.text_columns)
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
        if not 0 < self.dynamic_every:
            problems.append(f"dynamic_every must be > 0 (a fraction of an epoch), got {self.dynamic_every}")
        valid = [s.value for s in SchedulerType]
        if self.lr_scheduler_type not in valid:
            problems.append(f"scheduler {self.lr_scheduler_type!r} is not one of {valid}")
        if self.bf16 and self.fp16:
            problems.append("choose one of bf16 and fp16")
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


def _python_name(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


ALIASES = {_python_name(a): f.name for f in dataclasses.fields(TrainConfig) for a in f.metadata["aliases"]}


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
