"""Reading raw data: GLUE TSV folders, the Hub's GLUE, and user CSV / TSV / JSON Lines files."""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import models
from ..errors import UserError
from .tasks import CAUSAL_COLUMNS, DEFAULT_LABEL_COLUMNS, DEFAULT_TEXT_COLUMNS, GlueTask, HUB_GLUE_IDS
from .labels import infer_task_type

log = logging.getLogger(__name__)


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


def read_glue_folder(spec: GlueTask, folder: Path, where: str) -> dict:
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


def _load_glue_hub(spec: GlueTask) -> dict:
    """nyu-mll/glue from the Hub, or from the local datasets cache when offline."""
    import datasets
    import huggingface_hub.constants as hub_constants

    offline = not models.hub_reachable()
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


def load_glue(spec: GlueTask, data_dir) -> dict:
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
    return read_glue_folder(spec, folder, where=f"--data-dir {str(data_dir)!r}")


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
    except UnicodeDecodeError as e:
        raise UserError(f"data file {str(path)!r} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                        f"{e.start}); save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    except Exception as e:  # noqa: BLE001 -- a parser error is the user's file
        raise UserError(f"could not read data file {str(path)!r}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if len(df) == 0:
        raise UserError(f"data file {str(path)!r} has no rows")
    df.columns = [str(c).strip() for c in df.columns]
    return df


def load_user_files(train_file, validation_file, spec, text_columns, label_column, task_type,
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
        ttype = infer_task_type(train[label_column])
    return {"train": train, "eval": evals, "text_columns": tuple(text_columns),
            "label_column": label_column, "label_names": spec.label_names if spec else None,
            "task_type": ttype, "metrics": spec.metrics if spec else None,
            "main_metric": spec.main_metric if spec else None, "eval_split": eval_split,
            "source": f"{train_file} / {validation_file or 'holdout of train'}"}
