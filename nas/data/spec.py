"""The task spec: which task and data a run uses, written once.  It is the plan's ``task``
section, the task part of SearchConfig and TrainConfig (both extend it) and the task flags of
both CLIs (from each field's metadata)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..options import option
from .load import load_task
from .taskdata import TaskData
from .tasks import TASK_TYPES

# Other spellings of a task field found in plans (and in Hugging Face scripts).
PLAN_ALIASES = {"name": "task", "max_seq_length": "max_length"}


@dataclass
class TaskSpec:
    task: str | None = option(None, "GLUE task name (cola sst2 mrpc qqp stsb mnli qnli rte wnli), "
                                    "'sst2-sample' (bundled, the default), or omit with --train-file")
    data_dir: str | None = option(None, "local GLUE folder with the original TSV layout "
                                        "(<dir>/MRPC/train.tsv, ...)")
    train_file: str | None = option(None, "CSV, TSV or JSON Lines")
    validation_file: str | None = option(None, "CSV, TSV or JSON Lines (default: hold out 10%% of train)")
    text_columns: str | tuple[str, ...] | None = option(
        None, "one or two comma-separated text columns (causal LM: prompt,response)", type=str)
    label_column: str | None = option(None, "the label column of your files")
    task_type: str | None = option(None, "what the labels are (default: inferred)",
                                   choices=list(TASK_TYPES))
    num_labels: int | None = option(None, "classes of the task head (default: from the data)")
    max_length: int = option(128, "max tokens per example")
    max_train_samples: int | None = option(None, "train on a fixed random subset")
    max_eval_samples: int | None = option(None, "evaluate on a fixed random subset (default: all)")
    data_seed: int = option(0, "seed of the data subsets")

    def __post_init__(self):
        if isinstance(self.text_columns, str):
            self.text_columns = tuple(c.strip() for c in self.text_columns.split(",") if c.strip())
        elif self.text_columns is not None:
            self.text_columns = tuple(self.text_columns)

    def task_spec(self) -> "TaskSpec":
        """The task part alone (also of a SearchConfig or TrainConfig)."""
        return TaskSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TaskSpec)})

    def load(self, tokenizer=None, **overrides) -> TaskData:
        return load_task(tokenizer=tokenizer, **{**dataclasses.asdict(self.task_spec()), **overrides})

    def plan_section(self, data: TaskData) -> dict[str, Any]:
        """The plan's ``task`` section: what a later run needs to load the same task again."""
        fields = {"name": data.name, "task_type": data.task_type, "num_labels": data.num_labels,
                  "main_metric": data.main_metric, "data_dir": self.data_dir,
                  "train_file": self.train_file, "validation_file": self.validation_file,
                  "text_columns": list(data.text_columns) or None, "label_column": data.label_column,
                  # a subset the plan was searched on is the training its cost was counted against
                  "max_train_samples": self.max_train_samples, "max_eval_samples": self.max_eval_samples}
        if self.max_train_samples or self.max_eval_samples:
            fields["data_seed"] = self.data_seed
        return {k: v for k, v in fields.items() if v is not None}

    @classmethod
    def values_from_plan(cls, section: dict[str, Any]) -> dict[str, Any]:
        """The task fields a plan's ``task`` section sets (unknown keys such as main_metric skipped)."""
        names = {f.name for f in dataclasses.fields(TaskSpec)}
        out = {}
        for k, v in (section or {}).items():
            key = PLAN_ALIASES.get(k, k)
            if key in names and v is not None:
                out[key] = v
        return out
