"""What a search is told (SearchConfig) and what it returns (SearchResult)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path



from ..plan import Plan


PLAN_ATTR = "plan"


@dataclass
class SearchConfig:
    model: str | None = None  # None: the packaged MiniLM
    task: str | None = None  # None: the bundled SST-2 sample
    budget: str = "0.1%"
    space: str = "default"
    proxy: str | None = None  # None: proxies.DEFAULT_PROXY
    output_dir: str = "search-out"
    n_trials: int = 10
    timeout_s: float | None = None  # wall-clock limit of the trial stage
    trial_steps: int = 120  # full fidelity of one trial, in optimizer steps
    n_evals: int = 3  # evaluations per trial (rungs for the pruner)
    holdout: float = 0.2  # part of train used to score trials
    max_train_samples: int | None = None
    max_eval_samples: int | None = 400
    group_by_length: bool = True  # trials batch rows of similar lengths: faster, as fair to all
    proxy_batches: int = 4
    batch_size: int = 16
    max_length: int = 128
    lr: float = 1e-3  # starting point; every trial samples its own learning rate
    lr_range: tuple[float, float] = (3e-4, 3e-3)
    epochs: float = 3  # training hint written into the plan for the full run
    allocation: str = "static"  # static | dynamic, for the trials and the plan
    pruner: str = "hyperband"  # hyperband | halving | median | none
    sampler: str = "tpe"  # tpe | random
    storage: str | None = None  # None: journal file in output_dir
    study: str | None = None
    resume: bool = False
    seed: int = 0
    progress: bool = True
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    text_columns: str | list[str] | None = None  # 'a,b' or a list
    label_column: str | None = None


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
