"""Saved tiny models and data for the trainer, search, data and export tests.

A 2-layer BERT and Llama (hidden 32) saved with save_pretrained together with a tiny
BertTokenizerFast built from the word list below, and TSV files whose label says whether a
positive word occurs; the session fixtures that build them once live in conftest.py.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from nas import Plan, discover
from nas.train import TrainConfig

WORDS = ("good great fine nice bad awful poor sad the a movie film plot actor was is very not "
         "really quite what why answer question yes no").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = {"good", "great", "fine", "nice"}


def make_tokenizer(folder):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS) + "\n")
    # transformers 5 takes the vocabulary as ``vocab`` (a dict or a vocab.txt path).
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(SPECIALS + WORDS)}, do_lower_case=True)
    assert tok.tokenize("good movie") == ["good", "movie"]
    return tok


def make_tiny_bert(folder, seed: int = 0):
    """A 2-layer BERT (hidden 32) without task head, saved with its tokenizer."""
    from transformers import BertConfig, BertModel

    tok = make_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_tiny_llama(folder, seed: int = 0):
    """A 2-layer Llama (hidden 32) causal LM, saved with a tokenizer whose EOS is [SEP]."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(folder)
    tok.eos_token = "[SEP]"
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_sentiment(path, n: int, seed: int = 0, sep: str = "\t", label=None):
    """A TSV/CSV with 'sentence' and 'label' (1 when a positive word occurs)."""
    rng = random.Random(seed)
    lines = [f"sentence{sep}label"]
    for _ in range(n):
        s = sentence(rng, rng.randint(3, 9))
        y = label(s) if label else int(any(w in POSITIVE for w in s.split()))
        lines.append(f"{s}{sep}{y}")
    path.write_text("\n".join(lines) + "\n")
    return path


# The real GLUE copy: ``../shared/data/glue`` beside the repository, as CI lays it out.
GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def require_glue(node, *tasks: str, glue: Path = GLUE) -> Path:
    """``glue`` when it holds ``<task>/train.tsv`` and ``dev.tsv`` of each task.  Otherwise a test
    marked ``ci`` FAILS (CI always has ../shared beside the repository, so a skip there would
    hide a broken setup) and any other test is skipped.  The marker decides, not the CI
    environment variable: CI's script (.ci/run) sets none, and ``-m ci`` selects the same tests."""
    import pytest

    missing = [str(glue / t / f) for t in tasks for f in ("train.tsv", "dev.tsv")
               if not (glue / t / f).is_file()]
    if missing:
        why = f"real GLUE data not found: {', '.join(missing)}"
        if node.get_closest_marker("ci") is not None:
            pytest.fail(f"{why} (a `ci` test: CI must have ../shared/data/glue beside the repository)",
                        pytrace=False)
        pytest.skip(why)
    return glue


def lora_plan(model_dir, layout, roles=("q", "v"), rank=4, alpha=8.0, **fields) -> Plan:
    modules = {m.name: {"type": "lora", "rank": rank, "alpha": alpha}
               for m in layout.modules if m.role in roles}
    plan = Plan(model={"name_or_path": str(model_dir)}, modules=modules, **fields)
    plan.trainable_params = plan.count_params(layout)
    return plan


def bert_layout(model_dir):
    from nas.models import load_model

    return discover(load_model(str(model_dir), num_labels=2))


def cfg_for(files, **kw) -> TrainConfig:
    train_file, dev_file = files
    base = dict(train_file=str(train_file), validation_file=str(dev_file), epochs=2, batch_size=16,
                lr=5e-3, progress=False, max_length=32)
    return TrainConfig(**{**base, **kw})


ADAPTER_KINDS = ("lora", "more", "circulant", "toeplitz", "kronecker", "ldr")
SHORTCUTS = ("1.s_res1", "1.s_res2", "1.s_in", "1.s_cut", "0.s_res1")


def mixed_plan(model_dir, layout, kinds=ADAPTER_KINDS, shortcuts=SHORTCUTS) -> Plan:
    """Every adapter kind (round-robin over the projections) and every shortcut kind."""
    hp = {"lora": {"rank": 4}, "more": {"nblocks": 4, "rank": 2}, "kronecker": {"rank": 2},
          "ldr": {"rank": 2}}
    modules = {m.name: {"type": k, **hp.get(k, {})} for m, k in zip(layout.modules, kinds * 8)}
    plan = Plan(model={"name_or_path": str(model_dir)}, modules=modules,
                shortcuts={k: {"rank": 2, "alpha": 4.0} for k in shortcuts})
    plan.trainable_params = plan.count_params(layout)
    return plan


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def task_folder(d, n_train: int, n_dev: int = 16):
    """A tiny saved BERT (``d/model``) with sentiment ``d/train.tsv`` and ``d/dev.tsv``: what the
    search and CLI tests run on."""
    make_tiny_bert(d / "model")
    write_sentiment(d / "train.tsv", n_train, seed=1)
    write_sentiment(d / "dev.tsv", n_dev, seed=2)
    return d


def search_config(d, out, **kw):
    """A SearchConfig on ``task_folder(d)``, writing to ``out``, small enough for a test."""
    from nas.search import SearchConfig

    base = dict(model=str(d / "model"), train_file=str(d / "train.tsv"),
                validation_file=str(d / "dev.tsv"), budget="3k", output_dir=str(out),
                max_length=24, batch_size=8, progress=False)
    return SearchConfig(**{**base, **kw})


def finish(p, timeout: float = 240) -> str:
    """Wait for a worker subprocess; fail the test with its output if it hangs or exits non-zero."""
    import pytest

    try:
        out, err = p.communicate(timeout=timeout)
    except Exception:  # subprocess.TimeoutExpired
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"worker did not finish in {timeout}s:\n{out}\n{err}")
    assert p.returncode == 0, err
    return out


def bert_shaped_layout(layers: int, hidden: int):
    """A BERT-shaped layout without loading a model: ``layers`` layers of q, k, v, o
    (hidden x hidden) and the FFN (hidden <-> 4 hidden)."""
    from types import SimpleNamespace

    shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden), "o": (hidden, hidden),
              "ffn_up": (hidden, 4 * hidden), "ffn_down": (4 * hidden, hidden)}
    mods = [SimpleNamespace(name=f"l{i}.{r}", role=r, d_in=a, d_out=b, layer=i)
            for i in range(layers) for r, (a, b) in shapes.items()]
    return SimpleNamespace(modules=mods, num_layers=layers, module={m.name: m for m in mods}.__getitem__)


def minilm_layout():
    return bert_shaped_layout(6, 384)


def mpnet_layout():
    return bert_shaped_layout(12, 768)
