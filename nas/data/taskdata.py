"""TaskData: a tokenized task (train, eval, labels, metric) with holdout and subsampling."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from ..metrics import compute_metrics


# ---- TaskData -----------------------------------------------------------------------------
@dataclass
class TaskData:
    """A tokenized task: ``train`` and ``eval`` are ``datasets.Dataset`` objects with
    ``input_ids``, ``attention_mask`` (``token_type_ids`` where the tokenizer makes them) and
    ``labels`` (an int class id, a float for regression, or a list of token ids with -100 on
    prompt tokens for causal LM)."""

    name: str
    task_type: str
    num_labels: int  # 1 for regression; 0 for causal LM (the LM head is the model's own)
    main_metric: str
    metrics: tuple[str, ...]
    train: Any
    eval: Any
    tokenizer: Any
    label_names: list[str] | None = None
    text_columns: tuple[str, ...] = ()
    label_column: str | None = None
    max_length: int = 128
    source: str = ""
    eval_split: str = "dev"
    greater_is_better: bool = True
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"TaskData({self.name!r}, {self.task_type}, num_labels={self.num_labels}, "
                f"train={len(self.train)}, {self.eval_split}={len(self.eval)}, "
                f"main_metric={self.main_metric!r})")

    def holdout(self, fraction: float = 0.1, seed: int = 0) -> "TaskData":
        """A new TaskData: train = the rest of train, eval = a held-out part of TRAIN.

        The search evaluates on this split and never on the dev set.
        """
        n = len(self.train)
        if not 0 < fraction < 1:
            raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
        if n < 2:
            raise UserError(f"task {self.name!r}: {n} training row(s) is too few to hold any out")
        k = min(max(1, int(round(n * fraction))), n - 1)
        perm = np.random.default_rng(seed).permutation(n)
        held, rest = np.sort(perm[:k]), np.sort(perm[k:])
        return replace(self, train=self.train.select(rest.tolist()),
                       eval=self.train.select(held.tolist()), eval_split="holdout",
                       info={**self.info, "holdout": {"fraction": fraction, "seed": seed}})

    def subsample(self, max_train_samples: int | None = None, seed: int = 0,
                  max_eval_samples: int | None = None) -> "TaskData":
        """At most ``max_train_samples`` training rows (and eval rows), drawn with a fixed seed."""
        out = self
        if max_train_samples is not None and max_train_samples < len(self.train):
            out = replace(out, train=self.train.select(subset_indices(len(self.train), max_train_samples, seed)))
        if max_eval_samples is not None and max_eval_samples < len(self.eval):
            out = replace(out, eval=self.eval.select(subset_indices(len(self.eval), max_eval_samples, seed)))
        return out

    def collator(self):
        """Dynamic padding: pads each batch to its longest row (labels with -100 for LM)."""
        if self.task_type == "causal_lm":
            return CausalLMCollator(self.tokenizer)
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer)

    def compute_metrics(self, predictions, labels) -> dict[str, float]:
        """Classification: class ids; regression: floats (the GLUE metrics of this task)."""
        return compute_metrics(self.metrics, predictions, labels)

    def check_head(self, num_labels: int) -> None:
        """Raise a UserError when a label does not fit a model head with ``num_labels`` outputs."""
        if self.task_type == "causal_lm":
            return
        if self.task_type == "regression":
            if num_labels != 1:
                raise UserError(
                    f"task {self.name!r} is a regression task (one float label) but the model head "
                    f"has {num_labels} outputs; use a model with num_labels=1"
                )
            return
        for split_name, split in (("train", self.train), (self.eval_split, self.eval)):
            labels = column(split, "labels")
            if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
                bad = sorted({int(v) for v in labels if v < 0 or v >= num_labels})[:5]
                raise UserError(
                    f"labels {bad} in the {split_name} split of task {self.name!r} do not fit a "
                    f"classification head with {num_labels} labels (valid ids: 0..{num_labels - 1})"
                )

    def fingerprint(self) -> dict[str, Any]:
        """A cheap identity of the data, to refuse resuming a run on different data."""
        def digest(ds):
            lens = row_lengths(ds)
            return [len(ds), int(sum(lens)), int(sum(i * (v % 9973) for i, v in enumerate(lens[:2000])))]
        return {"name": self.name, "train": digest(self.train), "eval": digest(self.eval)}


def row_lengths(ds) -> list[int]:
    """Tokens per row, read column-wise through arrow: datasets' row-by-row access takes
    seconds on 50k rows, paid by every run and every search trial."""
    import pyarrow.compute as pc

    return pc.list_value_length(ds.with_format("arrow")["input_ids"]).to_numpy().tolist()


def column(ds, name: str) -> np.ndarray:
    """A scalar column (labels) as one numpy array, read column-wise like ``row_lengths``."""
    return ds.with_format("arrow")[name].to_numpy()


def subset_indices(n: int, k: int, seed: int) -> list[int]:
    return np.sort(np.random.default_rng(seed).permutation(n)[:k]).tolist()


class CausalLMCollator:
    """Pads input_ids (pad id), attention_mask (0) and labels (-100) on the tokenizer's side."""

    def __init__(self, tokenizer):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.left = getattr(tokenizer, "padding_side", "right") == "left"

    def __call__(self, rows: Sequence[dict]) -> dict:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for r in rows:
            pad = width - len(r["input_ids"])
            for key, value in (("input_ids", self.pad_id), ("attention_mask", 0), ("labels", -100)):
                seq = list(r[key])
                out[key].append([value] * pad + seq if self.left else seq + [value] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
