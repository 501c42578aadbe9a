"""Everything a search can check before it writes a file or loads a model: the settings, the
search space, the output folder and the model's position limit.  Each problem is one UserError
naming the setting and the fix."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import proxies
from optuna.trial import TrialState
from search_spaces import load_space

from ..budget import parse_budget
from ..errors import UserError
from ..io import folder_problem
from .config import SearchConfig


def _positive_int(name: str, value, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"{name} must be a positive integer, got {value!r}"
    return None


def check_settings(cfg: SearchConfig) -> None:
    problems = [p for p in (
        _positive_int("--trials", cfg.n_trials), _positive_int("--trial-steps", cfg.trial_steps),
        _positive_int("--batch-size", cfg.batch_size), _positive_int("--max-length", cfg.max_length),
        _positive_int("--max-train-samples", cfg.max_train_samples, allow_none=True),
    ) if p]
    if not (isinstance(cfg.first_trial_lr, (int, float)) and math.isfinite(cfg.first_trial_lr)
            and cfg.first_trial_lr > 0):
        problems.append(f"--lr must be a positive number such as 1e-3, got {cfg.first_trial_lr!r}")
    lo, hi = cfg.lr_range
    if not 0 < lo <= hi:
        problems.append(f"lr_range must be two positive numbers, low <= high, got {cfg.lr_range!r}")
    if not (isinstance(cfg.epochs, (int, float)) and cfg.epochs > 0):
        problems.append(f"--epochs must be > 0, got {cfg.epochs!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        problems.append(f"--seed must be an integer in 0..{2**32 - 1}, got {cfg.seed!r}")
    if not (isinstance(cfg.heartbeat_s, (int, float)) and cfg.heartbeat_s > 0):
        problems.append(f"--heartbeat must be a number of seconds > 0, got {cfg.heartbeat_s!r}")
    if not 0 < cfg.holdout < 1:
        problems.append(f"--holdout must be a fraction between 0 and 1, e.g. 0.2, got {cfg.holdout!r}")
    if cfg.proxy is not None and cfg.proxy not in proxies.PROXIES:
        problems.append(f"unknown --proxy {cfg.proxy!r}; choose one of {', '.join(sorted(proxies.PROXIES))}")
    if problems:
        raise UserError("; ".join(problems))
    parse_budget(cfg.budget, 10**12)  # its spelling; the count needs the model (prepare)
    try:
        load_space(cfg.space)
    except (ValueError, TypeError) as e:
        raise UserError(f"{e}; fix the space file (see the README's search-space section) or pick a "
                        f"built-in space") from None


def check_output(out: Path) -> None:
    """The output folder can be created (or written into) by this user."""
    kind, where = folder_problem(out) or (None, None)
    if kind == "file":
        raise UserError(f"output folder {str(out)!r} is an existing file; choose another -o")
    if kind == "under file":
        raise UserError(f"cannot create output folder {str(out)!r}: {str(where)!r} is a file; choose another -o")
    if kind == "read-only":
        raise UserError(f"cannot write into {str(where)!r} (permission denied); choose another -o")


def check_max_length(cfg: SearchConfig) -> None:
    """--max-length within the model's positions, from its config (no weights loaded)."""
    from transformers import AutoConfig

    from ..models import resolve_model

    path, extra = resolve_model(cfg.model)
    if "gguf_file" in extra or not Path(path).is_dir():
        return  # a Hub name or a GGUF file: the tokenizer truncates to the model's limit
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return  # load_model says what is wrong with the folder
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and cfg.max_length > limit:
        raise UserError(f"--max-length {cfg.max_length} is more than the model's {limit} positions; "
                        f"pass --max-length {limit} or less")


def make_output(out: Path, journal: Path | None) -> list[Path]:
    """Create the output folder; return what this command creates (the folder, or the files in
    it, and a journal elsewhere that does not exist yet)."""
    missing = [p for p in [out, *out.parents] if not p.exists()]
    made = [missing[-1]] if missing else [out / "proxy_scores.json"]
    made = [p for p in made + ([journal] if journal else []) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    return made


def remove_unless_resumable(made: list[Path], studies, kept: bool = False) -> None:
    """A search that fails before any trial finished removes what it created; one with a finished
    or an interrupted (re-queued) trial in any of its ``studies``, or with saved work (``kept``: a
    trained super-network), keeps it for --resume."""
    if kept or any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or "interrupted" in t.user_attrs
                   for study in studies for t in study.get_trials(deepcopy=False)):
        return
    for p in made:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
