"""The Optuna study: storage (``--storage`` checked before any model loads), samplers and pruners
(by name from a table, or an Optuna instance), and the settings a study is created with, which
``--resume`` and every later worker must share."""
from __future__ import annotations

import datetime
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from ..errors import UserError

# name -> factory(n_evals); the rungs of the multi-fidelity pruners are the trial's evaluations.
PRUNERS: dict[str, Callable[[int], BasePruner]] = {
    "hyperband": lambda n_evals: optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=n_evals, reduction_factor=3),
    "halving": lambda n_evals: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    "median": lambda n_evals: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    "none": lambda n_evals: optuna.pruners.NopPruner(),
}
# name -> factory(seed)
SAMPLERS: dict[str, Callable[[int], BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=4),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}
STORAGE_FORMS = ("postgresql://user:pw@host/db (pip install 'more-nas[postgres]'), sqlite:///path/study.db, "
                 "journal:///abs/path/study.journal or journal:rel/path.journal, or an existing Optuna "
                 "journal file")
# Settings a study is created with: a resume or another worker with other values would mix
# trials of two different searches in one answer.
STUDY_SETTINGS = ("model", "task", "train_file", "budget", "space")


def _from_table(spec, base: type, table: dict, what: str, arg):
    """An Optuna instance as given, or the one ``table`` builds for the name ``spec``."""
    if isinstance(spec, base):
        return spec
    if spec not in table:
        raise UserError(f"unknown {what} {spec!r}; choose {', '.join(table)} (or pass an Optuna {base.__name__})")
    return table[spec](arg)


def make_pruner(spec: str | BasePruner, n_evals: int) -> BasePruner:
    return _from_table(spec, BasePruner, PRUNERS, "pruner", n_evals)


def sampler_seed(seed: int, n_trials_so_far: int, nonce: int = 0) -> int:
    """Fresh draws for each resume (the study has grown) and each worker (nonce: its pid), while
    a single run stays reproducible at a seed."""
    return int(np.random.SeedSequence([seed, n_trials_so_far, nonce]).generate_state(1)[0])


def make_sampler(spec: str | BaseSampler, seed: int) -> BaseSampler:
    return _from_table(spec, BaseSampler, SAMPLERS, "sampler", seed)


# ---- storage -------------------------------------------------------------------------------
def is_journal(path: Path) -> bool:
    """An Optuna journal: its first line is a JSON operation."""
    try:
        with open(path, "rb") as f:
            first = json.loads(f.readline())
        return isinstance(first, dict) and "op_code" in first
    except (OSError, ValueError):
        return False


def set_aside_torn_tail(path: Path) -> int:
    """A journal whose last line was cut short (a full disk, a kill mid-write): move the tail to
    ``<journal>.torn-<UTC time>`` and cut the journal at its last complete line, so later appends
    are readable again.  Returns the bytes set aside (0: nothing torn)."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    lock = JournalFileSymlinkLock(str(path))  # the lock Optuna's JournalFileBackend takes to write
    lock.acquire()
    try:
        data = path.read_bytes()
        if data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        for i, line in enumerate(data[:keep].splitlines()):
            try:
                json.loads(line)
            except ValueError:
                raise UserError(f"journal {str(path)!r}: line {i + 1} is not a journal record, so this is "
                                f"not a torn last line; the file is left as it is") from None
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = path.with_name(f"{path.name}.torn-{stamp}")
        with open(aside, "wb") as f:
            f.write(data[keep:])
            f.flush()
            os.fsync(f.fileno())
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    finally:
        lock.release()
    print(f"journal: set aside a torn last line ({len(data) - keep} bytes) in {aside}")
    return len(data) - keep


def journal_path(text: str | None, default_journal: str | Path) -> Path | None:
    """The journal file ``--storage`` names (None: a database URL, or not a storage at all)."""
    if text is None:
        return Path(default_journal)
    if text.startswith("journal:"):
        path = text[len("journal:"):]
        return Path(path[2:] if path.startswith("//") else path)  # journal:///abs -> /abs
    if Path(text).is_file() and is_journal(Path(text)):
        return Path(text)
    return None


def shown_storage(text: str | None, default_journal: str | Path) -> str:
    """``--storage`` as plans and reports may show it: a database URL without its password (a
    plan is meant to be shared), a journal as its path."""
    journal = journal_path(text, default_journal)
    if journal is not None:
        return str(journal)
    from sqlalchemy.engine import make_url

    return make_url(text).render_as_string(hide_password=True)


def check_journal_path(p: Path) -> None:
    if not p.parent.is_dir():
        raise UserError(f"--storage: folder {str(p.parent)!r} does not exist; create it or choose another path")
    if p.is_dir():
        raise UserError(f"--storage: {str(p)!r} is a folder; name a journal file")
    if p.exists() and p.stat().st_size and not is_journal(p):
        raise UserError(f"--storage: {str(p)!r} exists and is not an Optuna journal; refusing to write "
                        f"into it (use {STORAGE_FORMS})")


def journal_storage(p: Path) -> JournalStorage:
    check_journal_path(p)
    set_aside_torn_tail(p)
    return JournalStorage(JournalFileBackend(str(p)))


def open_storage(text: str | None, default_journal: str | Path, heartbeat_s: float = 30.0):
    """``--storage`` as Optuna's own functions take it, or one UserError listing the accepted forms.

    RDB storages get heartbeats: a worker that dies has its trial failed and retried once
    (RetryHeartbeatStaleTrialCallback keeps the parameters and the original trial number)."""
    journal = journal_path(text, default_journal)
    if journal is not None:
        return journal_storage(journal)
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        url = make_url(text)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"--storage {text!r} is neither a database URL nor a journal; use {STORAGE_FORMS}") from None
    if url.drivername == "postgresql":  # SQLAlchemy 2.0 picks psycopg2, 2.1 psycopg: the extra installs psycopg
        url = url.set(drivername="postgresql+psycopg")
    try:
        url.get_dialect().import_dbapi()  # the driver, without connecting
    except sqlalchemy.exc.NoSuchModuleError:
        raise UserError(f"--storage {text!r}: unknown database {url.drivername!r}; use {STORAGE_FORMS}") from None
    except ImportError as e:
        raise UserError(f"--storage {text!r}: the database driver is not installed ({e.name or e}); "
                        f"for PostgreSQL: pip install 'more-nas[postgres]'") from None
    hidden = url.render_as_string(hide_password=True)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
    for attempt in range(3):
        try:  # connects and creates Optuna's tables: quick, and before any model loads
            return RDBStorage(url.render_as_string(hide_password=False), heartbeat_interval=max(1, round(heartbeat_s)),
                              grace_period=max(2, round(2 * heartbeat_s)),
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            # workers started together on a fresh database create the same tables and types at once
            error = e
            time.sleep(0.5 + attempt)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            error = e
            break
    orig = getattr(error, "orig", None) or error
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    raise UserError(f"--storage: cannot open {hidden}: {first}; check the URL and that the "
                    f"database server is running")


# ---- what a study was created with ---------------------------------------------------------
def study_settings(cfg) -> dict[str, Any]:
    """What a study is created with (from a SearchConfig); a resume or another worker must match."""
    from search_spaces import load_space

    return {"model": cfg.model or "minilm", "task": cfg.task, "train_file": cfg.train_file,
            "budget": str(cfg.budget), "space": load_space(cfg.space).to_dict(), "strategy": cfg.strategy,
            "pooling": cfg.pooling}


def open_checked_storage(cfg, out: Path):
    """A SearchConfig's storage, before any model loads (None: a journal not made yet, created
    with the output); a resume must find its study, and a study's settings must be ``cfg``'s."""
    journal = journal_path(cfg.storage, out / "study.journal")
    if journal is not None and not journal.exists():
        if cfg.storage is not None:  # (the default journal's folder is made with the output)
            check_journal_path(journal)
        if cfg.resume:
            raise UserError(f"--resume: {str(journal)!r} does not exist, so there is no search to resume; run "
                            f"without --resume to start one")
        return None
    storage = open_storage(cfg.storage, out / "study.journal", cfg.heartbeat_s)
    name = cfg.study or "more-search"
    names = set(optuna.study.get_all_study_names(storage))
    if name not in names:
        # A search killed before its study began (in the super-network or scoring stage, whose
        # study is NAME.scoring) resumes in its own journal; a shared storage must hold it.
        if cfg.resume and cfg.storage is not None and f"{name}.scoring" not in names:
            raise UserError(f"--resume: the storage holds no study {name!r} to resume; run without "
                            f"--resume to start it")
        return storage
    check_study_settings(optuna.load_study(study_name=name, storage=storage), study_settings(cfg), cfg.resume)
    return storage


def check_study_settings(study: optuna.Study, settings: dict[str, Any], resume: bool) -> None:
    """Store ``settings`` in a new study; refuse a resume or a worker whose settings differ."""
    stored = study.user_attrs.get("settings")
    if stored is None:
        if not study.trials:
            study.set_user_attr("settings", settings)
        return
    # A study stored before a setting existed ran at that setting's default ("cls" pooling).
    stored = {"pooling": "cls", **stored}
    differ = [f"{k}: study {stored.get(k)!r}, given {settings.get(k)!r}"
              for k in settings if stored.get(k) != settings.get(k)]
    if differ:
        verb = "resume" if resume else "join"
        raise UserError(f"cannot {verb} study {study.study_name!r}: its settings differ ({'; '.join(differ)}); "
                        f"run with the study's settings, or start a new study (another -o or --study)")
