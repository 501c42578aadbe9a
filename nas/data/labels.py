"""Labels: float labels for regression, class labels (integer or string) for classification,
and the task type inferred from a label column."""
from __future__ import annotations

import logging

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)


# ---- labels -------------------------------------------------------------------------------
def float_labels(values, col, split) -> np.ndarray:
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


def class_labels(train_vals, eval_vals, col, label_names, eval_split):
    y_tr, y_ev, names = _class_labels(train_vals, eval_vals, col, label_names, eval_split)
    if len(set(y_tr.tolist())) < 2:
        raise UserError(f"the training data has one class only (column {col!r}); a classifier needs at "
                        f"least two: check --label-column and the file")
    return y_tr, y_ev, names


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
    _mostly_numbers(tr, col)
    names = sorted({str(v).strip() for v in tr})
    index = {n: i for i, n in enumerate(names)}
    unseen = sorted({str(v).strip() for v in ev} - set(index))
    if unseen:
        raise UserError(f"labels {unseen[:5]} in the {eval_split} split of column {col!r} never occur "
                        f"in train (train labels: {names[:10]})")
    return (np.asarray([index[str(v).strip()] for v in tr]),
            np.asarray([index[str(v).strip()] for v in ev]), names)


def _number(v) -> bool:
    try:
        return bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False


def _mostly_numbers(values: list, col: str) -> None:
    """Labels that are mostly numbers with a few that are not ('nan', 'abc') are broken rows, not
    extra classes."""
    bad = [(i, v) for i, v in enumerate(values) if not _number(v)]
    # Fractional numbers (0.5, 1.5) are never class names: beside them any non-number is broken.
    fractional = any(_number(v) and float(v) != int(float(v)) for v in values)
    if bad and (len(bad) < len(values) / 2 or fractional):
        rows = ", ".join(f"row {i}: {v!r}" for i, v in bad[:5])
        raise UserError(f"column {col!r} holds numbers except in {len(bad)} row(s) ({rows}); fix or drop "
                        f"those rows (labels are numbers, so they are not extra classes)")


def infer_task_type(values) -> str:
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
