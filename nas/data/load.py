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

import importlib.resources
import logging
import os
from pathlib import Path
from typing import Sequence


from ..errors import UserError
from .tasks import GLUE_TASKS, SAMPLE_TASK, TASK_TYPES, glue_task, task_names
from .taskdata import TaskData, subset_indices
from .readers import load_glue, load_user_files, read_glue_folder
from .labels import class_labels, float_labels

log = logging.getLogger(__name__)


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
        raw = load_user_files(train_file, validation_file, spec, text_columns, label_column,
                               task_type, validation_fraction, data_seed)
        name = task or Path(train_file).stem
    elif spec is not None:
        raw = load_glue(spec, data_dir)
        name = spec.name
    else:  # the bundled sample (also the default)
        folder = Path(str(importlib.resources.files("nas") / "data" / "sst2_sample"))
        spec = GLUE_TASKS["sst2"]
        raw = read_glue_folder(spec, folder, where="the bundled SST-2 sample")
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
        y_train = float_labels(train_df[label_col], label_col, "train")
        y_eval = float_labels(eval_df[label_col], label_col, raw["eval_split"])
        n_labels = 1
    else:
        y_train, y_eval, label_names = class_labels(
            train_df[label_col], eval_df[label_col], label_col, label_names, raw["eval_split"])
        n_labels = num_labels or (len(label_names) if label_names else
                                  max(spec.num_labels if spec else 2, int(max(y_train.max(), y_eval.max())) + 1))
    train_idx = subset_indices(len(train_df), max_train, data_seed) if max_train and max_train < len(train_df) else None
    eval_idx = subset_indices(len(eval_df), max_eval, data_seed) if max_eval and max_eval < len(eval_df) else None
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
    train_idx = subset_indices(len(train_df), max_train, data_seed) if max_train and max_train < len(train_df) else None
    eval_idx = subset_indices(len(eval_df), max_eval, data_seed) if max_eval and max_eval < len(eval_df) else None
    return TaskData(name=name, task_type="causal_lm", num_labels=0, main_metric="token_accuracy",
                    metrics=("token_accuracy", "loss", "perplexity"),
                    train=encode(train_df, train_idx), eval=encode(eval_df, eval_idx),
                    tokenizer=tokenizer, text_columns=(prompt_col, response_col), label_column=None,
                    max_length=max_length, source=raw["source"], eval_split=raw["eval_split"])
