"""What a search is told (SearchConfig: its fields carry the more-search flags' defaults and help)
and what it returns (SearchResult)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.spec import TaskSpec
from ..options import option
from ..plan import Plan
from .study import PRUNERS, SAMPLERS

PLAN_ATTR = "plan"
ALLOCATIONS = ["static", "dynamic"]


@dataclass
class SearchConfig(TaskSpec):
    model: str | None = option(None, "Hub name, local folder, .gguf file, or 'minilm' (default) / 'smollm2'")
    budget: str = option("0.1%", "trainable adapter+shortcut parameters: a percentage of the base model "
                             "('0.1%%') or a count ('200k', '1.5M'); the task head is not counted")
    space: str = option("default", "search space: default, lora, more, surm, heterolora, or a JSON file")
    proxy: str | None = option(None, "zero-cost proxy (default: the proxies package's best-ranking one)")
    output_dir: str = option("search-out", "output folder, or a path ending in .json to also write the plan "
                                       "there (the folder is then <name>.search beside it)",
                         flags=["-o", "--output"])
    n_trials: int = option(10, "number of finished trials to aim for", flags=["--trials"])
    timeout_s: float | None = None  # wall-clock limit of the trial stage (the CLI's --time-budget)
    trial_steps: int = option(120, "optimizer steps of one full trial")
    n_evals: int = 3  # evaluations per trial (rungs for the pruner)
    holdout: float = option(0.2, "part of train that scores the trials")
    trial_eval_samples: int | None = 400  # held-out rows that score a trial (None: all)
    group_by_length: bool = True  # trials batch rows of similar lengths: faster, as fair to all
    proxy_batches: int = 4
    batch_size: int = option(16, "training batch size")
    first_trial_lr: float = option(1e-3, "learning rate of the first (proxy plan) trial; every other trial "
                                     "samples its own in lr_range", aliases=["--lr"])
    lr_range: tuple[float, float] = (3e-4, 3e-3)
    epochs: float = option(3, "epochs hint written into the plan for the full run")
    allocation: str = option("static", "how trials (and the plan's full run) allocate modules", choices=ALLOCATIONS)
    pruner: str = option("hyperband", "Optuna pruner of the trials (or pass an optuna Pruner in Python)",
                     choices=list(PRUNERS))
    sampler: str = option("tpe", "Optuna sampler (or pass an optuna Sampler in Python)", choices=list(SAMPLERS))
    storage: str | None = option(None, "Optuna storage shared by several workers: a database URL "
                                   "(postgresql://user:pw@host/db, sqlite:///path/study.db), "
                                   "journal:///abs/path or journal:rel/path, or an existing journal "
                                   "file (default: study.journal in the output folder)")
    study: str | None = option(None, "study name in the storage (default more-search)")
    heartbeat_s: float = option(30.0, "seconds between a worker's heartbeats on a database storage; a "
                                      "trial silent for twice this is retried once by another worker",
                                flags=["--heartbeat"])
    resume: bool = option(False, "continue an interrupted search in the output folder")
    seed: int = option(0, "seed of the search, the task head and the data split")
    progress: bool = True


@dataclass
class SearchResult:
    plan: Plan
    plan_path: Path
    best_value: float
    n_complete: int
    n_pruned: int
    n_failed: int
    stage_seconds: dict[str, float] = field(default_factory=dict)
    pareto: list[dict] = field(default_factory=list)
