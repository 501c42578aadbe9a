"""Tasks: what to train on, loaded and tokenized into a ``TaskData``.

Where the data comes from (``load_task``):
  * a GLUE task by name (cola sst2 mrpc qqp stsb mnli mnli-mm qnli rte wnli):
      - from a local GLUE folder with the original TSV layout when ``data_dir`` is given
        (``<data_dir>/MRPC/train.tsv`` and ``dev.tsv``; ``$GLUE_DIR`` is used when set),
      - otherwise from the Hub or the local ``datasets`` cache (``nyu-mll/glue``);
  * ``sst2-sample`` (also the default when nothing is given): the SST-2 sample bundled in
    ``nas/data/sst2_sample`` (2,000 train rows, the full dev set);
  * user files (``train_file`` / ``validation_file``: CSV, TSV or JSON Lines) with one or two
    text columns and a label column, for classification (integer or string labels),
    regression (float labels, STS-B style) or, for decoder models, causal-LM instruction data
    (``prompt`` / ``response`` columns; the loss is on the response tokens only).

Every GLUE metric is "higher is better"; the causal-LM main metric is the next-token accuracy on
response tokens (also reported: ``loss`` and ``perplexity``).
"""
from __future__ import annotations

import csv
import importlib.resources
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import UserError
from .metrics import compute_metrics

log = logging.getLogger(__name__)

TASK_TYPES = ("classification", "regression", "causal_lm")
SAMPLE_TASK = "sst2-sample"
HUB_GLUE_IDS = ("nyu-mll/glue", "glue")


# ---- task table ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GlueTask:
    name: str
    folder: str  # canonical GLUE folder name (SST-2, MRPC, ...)
    text_columns: tuple[str, ...]  # columns of the original TSV
    label_column: str
    hub_text_columns: tuple[str, ...]  # columns of the Hub's nyu-mll/glue
    label_names: tuple[str, ...] | None = None  # TSV labels that are strings, in id order
    num_labels: int = 2
    task_type: str = "classification"
    metrics: tuple[str, ...] = ("accuracy",)
    main_metric: str = "accuracy"
    columns: tuple[str, ...] | None = None  # for a TSV without header row
    dev_file: str = "dev.tsv"
    hub_config: str | None = None
    hub_validation_split: str = "validation"


_NLI2 = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, GlueTask] = {t.name: t for t in [
    GlueTask("cola", "CoLA", ("sentence",), "label", ("sentence",), metrics=("mcc", "accuracy"),
             main_metric="mcc", columns=("source", "label", "marker", "sentence")),
    GlueTask("sst2", "SST-2", ("sentence",), "label", ("sentence",)),
    GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"),
             metrics=("accuracy", "f1")),
    GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("question1", "question2"),
             metrics=("accuracy", "f1")),
    GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", ("sentence1", "sentence2"),
             num_labels=1, task_type="regression", metrics=("pearson", "spearman"),
             main_metric="pearson"),
    GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"),
             label_names=("entailment", "neutral", "contradiction"), num_labels=3,
             dev_file="dev_matched.tsv", hub_validation_split="validation_matched"),
    GlueTask("mnli-mm", "MNLI", ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"),
             label_names=("entailment", "neutral", "contradiction"), num_labels=3,
             dev_file="dev_mismatched.tsv", hub_config="mnli",
             hub_validation_split="validation_mismatched"),
    GlueTask("qnli", "QNLI", ("question", "sentence"), "label", ("question", "sentence"),
             label_names=_NLI2),
    GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"),
             label_names=_NLI2),
    GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2")),
]}
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli_matched": "mnli", "mnli-m": "mnli",
            "mnli_mismatched": "mnli-mm", "mnli-mismatched": "mnli-mm"}

# Default column names tried, in order, for user files.
DEFAULT_TEXT_COLUMNS = [("sentence1", "sentence2"), ("premise", "hypothesis"),
                        ("question1", "question2"), ("question", "sentence"), ("text",),
                        ("sentence",)]
DEFAULT_LABEL_COLUMNS = ("label", "labels", "score")
CAUSAL_COLUMNS = ("prompt", "response")


def task_names() -> list[str]:
    return sorted(GLUE_TASKS) + [SAMPLE_TASK]


def glue_task(name: str) -> GlueTask | None:
    key = name.strip().lower()
    return GLUE_TASKS.get(_ALIASES.get(key, key))


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
            out = replace(out, train=self.train.select(_subset(len(self.train), max_train_samples, seed)))
        if max_eval_samples is not None and max_eval_samples < len(self.eval):
            out = replace(out, eval=self.eval.select(_subset(len(self.eval), max_eval_samples, seed)))
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
            labels = np.asarray(split["labels"])
            if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
                bad = sorted({int(v) for v in labels if v < 0 or v >= num_labels})[:5]
                raise UserError(
                    f"labels {bad} in the {split_name} split of task {self.name!r} do not fit a "
                    f"classification head with {num_labels} labels (valid ids: 0..{num_labels - 1})"
                )

    def fingerprint(self) -> dict[str, Any]:
        """A cheap identity of the data, to refuse resuming a run on different data."""
        def digest(ds):
            lens = [len(x) for x in ds["input_ids"]]
            return [len(ds), int(sum(lens)), int(sum(i * (v % 9973) for i, v in enumerate(lens[:2000])))]
        return {"name": self.name, "train": digest(self.train), "eval": digest(self.eval)}


def _subset(n: int, k: int, seed: int) -> list[int]:
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


# ---- loading ------------------------------------------------------------------------------
def load_task(task: str | None = None, tokenizer=None, *, data_dir: str | os.PathLike | None = None,
              train_file: str | os.PathLike | None = None,
              validation_file: str | os.PathLike | None = None,
              text_columns: Sequence[str] | str | None = None, label_column: str | None = None,
              task_type: str | None = None, num_labels: int | None = None, max_length: int = 128,
              max_train_samples: int | None = None, max_eval_samples: int | None = None,
              data_seed: int = 0, validation_fraction: float = 0.1) -> TaskData:
    """Load, check and tokenize a task (see the module docstring for the sources).

    ``tokenizer`` is required (a transformers tokenizer).  ``max_train_samples`` keeps a fixed
    random subset (seed ``data_seed``) before tokenization.  With a train file and no
    validation file, ``validation_fraction`` of train is held out as the eval split.
    """
    if tokenizer is None:
        raise ValueError("load_task needs a tokenizer")
    if task_type is not None and task_type not in TASK_TYPES:
        raise UserError(f"task type {task_type!r} is not one of {list(TASK_TYPES)}")
    if isinstance(text_columns, str):
        text_columns = [c.strip() for c in text_columns.split(",") if c.strip()]
    text_columns = tuple(text_columns) if text_columns else None
    if validation_file and not train_file:
        raise UserError("--validation-file needs --train-file as well")
    spec = glue_task(task) if task else None
    if task and spec is None and task.strip().lower() != SAMPLE_TASK and not train_file:
        raise UserError(
            f"unknown task {task!r}; known tasks: {', '.join(task_names())}, "
            f"or pass your own data with --train-file/--validation-file"
        )

    if train_file:
        raw = _load_user_files(train_file, validation_file, spec, text_columns, label_column,
                               task_type, validation_fraction, data_seed)
        name = task or Path(train_file).stem
    elif spec is not None:
        raw = _load_glue(spec, data_dir)
        name = spec.name
    else:  # the bundled sample (also the default)
        folder = Path(str(importlib.resources.files("nas") / "data" / "sst2_sample"))
        spec = GLUE_TASKS["sst2"]
        raw = _read_glue_folder(spec, folder, where="the bundled SST-2 sample")
        raw["source"] = f"bundled SST-2 sample ({folder})"
        name = SAMPLE_TASK

    ttype = task_type or raw["task_type"]
    if ttype == "causal_lm":
        return _build_causal(name, raw, tokenizer, max_length, max_train_samples, max_eval_samples,
                             data_seed)
    return _build_supervised(name, raw, ttype, spec, tokenizer, num_labels, max_length,
                             max_train_samples, max_eval_samples, data_seed)


def _build_supervised(name, raw, ttype, spec, tokenizer, num_labels, max_length, max_train,
                      max_eval, data_seed) -> TaskData:
    train_df, eval_df = raw["train"], raw["eval"]
    text_cols, label_col = raw["text_columns"], raw["label_column"]
    if len(text_cols) not in (1, 2):
        raise UserError(f"give one or two text columns (a sentence or a sentence pair), got {list(text_cols)}")
    label_names = raw.get("label_names")
    if ttype == "regression":
        y_train = _float_labels(train_df[label_col], label_col, "train")
        y_eval = _float_labels(eval_df[label_col], label_col, raw["eval_split"])
        n_labels = 1
    else:
        y_train, y_eval, label_names = _class_labels(
            train_df[label_col], eval_df[label_col], label_col, label_names, raw["eval_split"])
        n_labels = num_labels or (len(label_names) if label_names else
                                  max(spec.num_labels if spec else 2, int(max(y_train.max(), y_eval.max())) + 1))
    train_idx = _subset(len(train_df), max_train, data_seed) if max_train and max_train < len(train_df) else None
    eval_idx = _subset(len(eval_df), max_eval, data_seed) if max_eval and max_eval < len(eval_df) else None
    train = _tokenize(tokenizer, train_df, text_cols, y_train, max_length, train_idx)
    evals = _tokenize(tokenizer, eval_df, text_cols, y_eval, max_length, eval_idx)
    metrics = raw.get("metrics") or (("pearson", "spearman") if ttype == "regression" else ("accuracy",))
    main = raw.get("main_metric") or metrics[0]
    data = TaskData(name=name, task_type=ttype, num_labels=n_labels, main_metric=main,
                    metrics=tuple(metrics), train=train, eval=evals, tokenizer=tokenizer,
                    label_names=list(label_names) if label_names else None,
                    text_columns=tuple(text_cols), label_column=label_col, max_length=max_length,
                    source=raw["source"], eval_split=raw["eval_split"])
    if ttype == "classification":
        data.check_head(n_labels)
    return data


def _tokenize(tokenizer, df, text_cols, labels, max_length, idx=None):
    import datasets

    if idx is not None:
        df, labels = df.iloc[idx], labels[idx]
    texts = [df[c].astype(str).tolist() for c in text_cols]
    enc = tokenizer(*texts, truncation=True, max_length=max_length)
    cols = {k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}
    cols["labels"] = labels.tolist()
    return datasets.Dataset.from_dict(cols)


def _build_causal(name, raw, tokenizer, max_length, max_train, max_eval, data_seed) -> TaskData:
    import datasets

    prompt_col, response_col = raw["text_columns"]
    bos = tokenizer.bos_token_id
    add_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    eos = tokenizer.eos_token_id

    def encode(df, idx):
        if idx is not None:
            df = df.iloc[idx]
        prompts = tokenizer(df[prompt_col].astype(str).tolist(), add_special_tokens=False)["input_ids"]
        responses = tokenizer(df[response_col].astype(str).tolist(), add_special_tokens=False)["input_ids"]
        cols = {"input_ids": [], "attention_mask": [], "labels": []}
        dropped = 0
        for p, r in zip(prompts, responses):
            p = ([bos] if add_bos else []) + p
            r = r + ([eos] if eos is not None else [])
            if not r:
                dropped += 1
                continue
            keep_p = max(max_length - len(r), max_length // 2)
            if len(p) > keep_p:  # keep the end of a long prompt: it is next to the response
                p = p[len(p) - keep_p:]
            ids = (p + r)[:max_length]
            labels = ([-100] * len(p) + r)[:max_length]
            cols["input_ids"].append(ids)
            cols["attention_mask"].append([1] * len(ids))
            cols["labels"].append(labels)
        if dropped:
            log.warning("dropped %d row(s) with an empty response", dropped)
        return datasets.Dataset.from_dict(cols)

    train_df, eval_df = raw["train"], raw["eval"]
    train_idx = _subset(len(train_df), max_train, data_seed) if max_train and max_train < len(train_df) else None
    eval_idx = _subset(len(eval_df), max_eval, data_seed) if max_eval and max_eval < len(eval_df) else None
    return TaskData(name=name, task_type="causal_lm", num_labels=0, main_metric="token_accuracy",
                    metrics=("token_accuracy", "loss", "perplexity"),
                    train=encode(train_df, train_idx), eval=encode(eval_df, eval_idx),
                    tokenizer=tokenizer, text_columns=(prompt_col, response_col), label_column=None,
                    max_length=max_length, source=raw["source"], eval_split=raw["eval_split"])


# ---- labels -------------------------------------------------------------------------------
def _float_labels(values, col, split) -> np.ndarray:
    out, bad = [], []
    for i, v in enumerate(values.tolist()):
        try:
            f = float(v)
            if not np.isfinite(f):
                raise ValueError
            out.append(f)
        except (TypeError, ValueError):
            bad.append((i, v))
    if bad:
        raise UserError(
            f"regression labels in column {col!r} ({split}) must be numbers; not numbers: "
            f"{', '.join(f'row {i}: {v!r}' for i, v in bad[:5])}"
        )
    return np.asarray(out, dtype=np.float32)


def _as_int(v):
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, str):
        s = v.strip()
        if s.lstrip("-").isdigit():
            return int(s)
    return None


def _class_labels(train_vals, eval_vals, col, label_names, eval_split):
    tr, ev = train_vals.tolist(), eval_vals.tolist()
    if label_names:
        index = {n: i for i, n in enumerate(label_names)}
        ints = [_as_int(v) for v in tr + ev]
        if all(i is not None for i in ints):  # files that already hold ids
            return np.asarray(ints[:len(tr)]), np.asarray(ints[len(tr):]), label_names
        bad = sorted({str(v) for v in tr + ev if str(v).strip() not in index})
        if bad:
            raise UserError(f"labels {bad[:5]} in column {col!r} are not among {list(label_names)}")
        return (np.asarray([index[str(v).strip()] for v in tr]),
                np.asarray([index[str(v).strip()] for v in ev]), label_names)
    ints_tr, ints_ev = [_as_int(v) for v in tr], [_as_int(v) for v in ev]
    if all(i is not None for i in ints_tr + ints_ev):
        y_tr, y_ev = np.asarray(ints_tr, dtype=np.int64), np.asarray(ints_ev, dtype=np.int64)
        neg = sorted({int(v) for v in np.concatenate([y_tr, y_ev]) if v < 0})
        if neg:
            raise UserError(f"class labels in column {col!r} must be ids 0, 1, ...; found {neg[:5]}")
        return y_tr, y_ev, None
    floats = [v for v in tr + ev if isinstance(v, (float, np.floating))]
    if floats:
        raise UserError(
            f"column {col!r} holds non-integer numbers (e.g. {floats[0]!r}) for a classification "
            f"task; for a regression task (STS-B style) pass --task-type regression"
        )
    names = sorted({str(v).strip() for v in tr})
    index = {n: i for i, n in enumerate(names)}
    unseen = sorted({str(v).strip() for v in ev} - set(index))
    if unseen:
        raise UserError(f"labels {unseen[:5]} in the {eval_split} split of column {col!r} never occur "
                        f"in train (train labels: {names[:10]})")
    return (np.asarray([index[str(v).strip()] for v in tr]),
            np.asarray([index[str(v).strip()] for v in ev]), names)


# ---- GLUE ---------------------------------------------------------------------------------
def _read_tsv(path: Path, columns: tuple[str, ...] | None, needed: Sequence[str]):
    """The original GLUE reader: split on tabs, no quoting (quotes are part of the text)."""
    import pandas as pd

    lines = path.read_text(encoding="utf-8-sig").split("\n")
    lines = [ln.rstrip("\r") for ln in lines]
    while lines and not lines[-1]:
        lines.pop()
    if columns is None:
        if not lines:
            raise UserError(f"{path} is empty")
        header, lines = lines[0].split("\t"), lines[1:]
    else:
        header = list(columns)
    missing = [c for c in needed if c not in header]
    if missing:
        raise UserError(f"{path}: column(s) {missing} not found; columns: {header}")
    pos = [header.index(c) for c in needed]
    rows, skipped = [], 0
    for ln in lines:
        fields = ln.split("\t")
        if len(fields) <= max(pos):
            skipped += 1
            continue
        rows.append([fields[p] for p in pos])
    if skipped:
        log.warning("%s: skipped %d malformed row(s)", path, skipped)
    return pd.DataFrame(rows, columns=list(needed))


def _read_glue_folder(spec: GlueTask, folder: Path, where: str) -> dict:
    needed = list(spec.text_columns) + [spec.label_column]
    files = {"train": folder / "train.tsv", "eval": folder / spec.dev_file}
    for f in files.values():
        if not f.is_file():
            raise UserError(f"{where}: {f} does not exist (expected the original GLUE layout "
                            f"{spec.folder}/train.tsv and {spec.folder}/{spec.dev_file})")
    train = _read_tsv(files["train"], spec.columns, needed)
    evals = _read_tsv(files["eval"], spec.columns, needed)
    return {"train": train, "eval": evals, "text_columns": spec.text_columns,
            "label_column": spec.label_column, "label_names": spec.label_names,
            "task_type": spec.task_type, "metrics": spec.metrics, "main_metric": spec.main_metric,
            "eval_split": "dev", "source": f"GLUE {spec.name} from {folder}"}


def _hub_reachable() -> bool:
    from .models import _hub_reachable as reachable

    return reachable()


def _load_glue_hub(spec: GlueTask) -> dict:
    """nyu-mll/glue from the Hub, or from the local datasets cache when offline."""
    import datasets
    import huggingface_hub.constants as hub_constants

    offline = not _hub_reachable()
    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    if offline:
        datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    errors = []
    try:
        for repo in HUB_GLUE_IDS:
            try:
                ds = datasets.load_dataset(repo, spec.hub_config or spec.name)
                break
            except Exception as e:  # noqa: BLE001 -- any failure means "not available"
                errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        else:
            raise UserError(
                f"GLUE task {spec.name!r} is not available: it is not in the local datasets cache"
                f"{' and the Hugging Face Hub cannot be reached' if offline else ' and could not be downloaded'}"
                f" ({errors[0]}). Pass --data-dir with a local GLUE folder in the original layout "
                f"(<dir>/{spec.folder}/train.tsv and <dir>/{spec.folder}/{spec.dev_file}), or set $GLUE_DIR"
            )
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
    train = ds["train"].to_pandas()
    evals = ds[spec.hub_validation_split].to_pandas()
    return {"train": train, "eval": evals, "text_columns": spec.hub_text_columns,
            "label_column": "label", "label_names": None, "task_type": spec.task_type,
            "metrics": spec.metrics, "main_metric": spec.main_metric, "eval_split": "dev",
            "source": f"GLUE {spec.name} from the Hub/cache ({HUB_GLUE_IDS[0]})"}


def _load_glue(spec: GlueTask, data_dir) -> dict:
    data_dir = data_dir or os.environ.get("GLUE_DIR") or None
    if data_dir is None:
        return _load_glue_hub(spec)
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"--data-dir {str(data_dir)!r} is not a folder")
    folder = root / spec.folder
    if not folder.is_dir():
        # Accept the task folder itself, and a case-insensitive folder name.
        if (root / "train.tsv").is_file():
            folder = root
        else:
            alt = [p for p in root.iterdir() if p.is_dir() and p.name.lower().replace("-", "")
                   == spec.folder.lower().replace("-", "")]
            if not alt:
                have = sorted(p.name for p in root.iterdir() if p.is_dir())
                raise UserError(f"--data-dir {str(data_dir)!r} has no {spec.folder}/ folder for task "
                                f"{spec.name!r} (it has: {have})")
            folder = alt[0]
    return _read_glue_folder(spec, folder, where=f"--data-dir {str(data_dir)!r}")


# ---- user files ---------------------------------------------------------------------------
def _read_table(path) -> Any:
    import pandas as pd

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"data file {str(path)!r} does not exist")
    suffix = "".join(p.suffixes[-2:]).lower() if p.suffix == ".gz" else p.suffix.lower()
    try:
        if suffix.startswith(".jsonl") or suffix.startswith(".json"):
            df = pd.read_json(p, lines=True, dtype=False)
        elif suffix.startswith(".tsv") or suffix.startswith(".tab"):
            df = pd.read_csv(p, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
                             encoding="utf-8-sig")
        elif suffix.startswith(".csv"):
            df = pd.read_csv(p, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        else:
            raise UserError(f"data file {str(path)!r}: unknown format {p.suffix!r}; "
                            f"use .csv, .tsv or .jsonl (JSON Lines)")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- a parser error is the user's file
        raise UserError(f"could not read data file {str(path)!r}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if len(df) == 0:
        raise UserError(f"data file {str(path)!r} has no rows")
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _load_user_files(train_file, validation_file, spec, text_columns, label_column, task_type,
                     validation_fraction, data_seed) -> dict:
    train = _read_table(train_file)
    if validation_file:
        evals, eval_split = _read_table(validation_file), "validation"
    else:
        n = len(train)
        if n < 2:
            raise UserError(f"{train_file}: too few rows to hold out a validation split; "
                            f"pass --validation-file")
        k = min(max(1, int(round(n * validation_fraction))), n - 1)
        perm = np.random.default_rng(data_seed).permutation(n)
        evals = train.iloc[np.sort(perm[:k])].reset_index(drop=True)
        train = train.iloc[np.sort(perm[k:])].reset_index(drop=True)
        eval_split = "holdout"
        log.info("no validation file: holding out %d of %d train rows for evaluation", k, n)
    cols = list(train.columns)
    ttype = task_type or (spec.task_type if spec else None)
    if ttype is None and all(c in cols for c in CAUSAL_COLUMNS) and label_column is None:
        ttype = "causal_lm"

    def check(names, what):
        for where, df in (("train", train), (eval_split, evals)):
            missing = [c for c in names if c not in df.columns]
            if missing:
                f = train_file if where == "train" else validation_file or train_file
                raise UserError(f"{what} column(s) {missing} not found in {str(f)!r}; "
                                f"available columns: {list(df.columns)}")

    if ttype == "causal_lm":
        tcols = text_columns or CAUSAL_COLUMNS
        if len(tcols) != 2:
            raise UserError(f"causal-LM data needs two columns (prompt, response), got {list(tcols)}")
        check(tcols, "prompt/response")
        return {"train": train, "eval": evals, "text_columns": tuple(tcols), "task_type": "causal_lm",
                "eval_split": eval_split, "source": f"{train_file} / {validation_file or 'holdout'}"}

    if text_columns is None:
        tries = ([spec.text_columns, spec.hub_text_columns] if spec else []) + DEFAULT_TEXT_COLUMNS
        text_columns = next((t for t in tries if all(c in cols for c in t)), None)
        if text_columns is None:
            raise UserError(f"could not tell the text column(s) of {str(train_file)!r}; pass "
                            f"--text-columns (one or two names); available columns: {cols}")
    check(text_columns, "text")
    if label_column is None:
        tries = ([spec.label_column] if spec else []) + list(DEFAULT_LABEL_COLUMNS)
        label_column = next((c for c in tries if c in cols), None)
        if label_column is None:
            raise UserError(f"no label column in {str(train_file)!r}; pass --label-column; "
                            f"available columns: {cols}")
    check([label_column], "label")
    if ttype is None:
        ttype = _infer_task_type(train[label_column])
    return {"train": train, "eval": evals, "text_columns": tuple(text_columns),
            "label_column": label_column, "label_names": spec.label_names if spec else None,
            "task_type": ttype, "metrics": spec.metrics if spec else None,
            "main_metric": spec.main_metric if spec else None, "eval_split": eval_split,
            "source": f"{train_file} / {validation_file or 'holdout of train'}"}


def _infer_task_type(values) -> str:
    """Regression when the labels are numbers and some are not integers; else classification."""
    non_int = 0
    for v in values.tolist()[:5000]:
        if _as_int(v) is not None:
            continue
        try:
            float(v)
        except (TypeError, ValueError):
            return "classification"  # string class names
        non_int += 1
    if non_int:
        log.info("labels are non-integer numbers: treating the task as regression")
        return "regression"
    return "classification"
