"""The search: ``run_search(SearchConfig(...))`` runs the proxy stage, an Optuna study of short
trials and writes the best plan with its report (engine.py; config.py, trials.py, study.py,
report.py beside it)."""
from .config import SearchConfig, SearchResult
from .engine import Search, run_search
from .trials import plan_hash, reweight, trial_rank

__all__ = ["Search", "SearchConfig", "SearchResult", "plan_hash", "reweight", "run_search", "trial_rank"]
