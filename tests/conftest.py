"""Shared fixtures and factories: tiny random HF models of every supported family.

Every tiny model has hidden size 32, 2 layers and a 2-label sequence-classification head,
so a forward pass takes milliseconds on one CPU core.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from tests.factories import bert_layout, make_tiny_bert, make_tiny_llama, write_sentiment

pytest_plugins = ["tests.postgres"]

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tiny models are far too small to gain from intra-op threads, and on a shared 2-core
# machine a second OpenMP thread that has to wait for a busy core makes each op ~50x slower.
torch.set_num_threads(1)

HIDDEN = 32
VOCAB = 64


def _tiny_configs():
    import transformers as T

    common = dict(vocab_size=VOCAB, num_labels=2)
    enc = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=48, max_position_embeddings=64)
    # Fixed dropout-free configs so train() vs eval() cannot make outputs differ.
    nodrop = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    opt = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, ffn_dim=48,
               max_position_embeddings=64, word_embed_proj_dim=HIDDEN, pad_token_id=1,
               bos_token_id=2, eos_token_id=2, dropout=0.0, attention_dropout=0.0)
    return {
        "bert": lambda: T.BertConfig(**enc, **nodrop, **common),
        "roberta": lambda: T.RobertaConfig(**enc, **nodrop, pad_token_id=1, **common),
        "mpnet": lambda: T.MPNetConfig(**enc, **nodrop, **common),
        "llama": lambda: T.LlamaConfig(
            hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=48, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, **common),
        "opt": lambda: T.OPTConfig(**opt, **common),
        "opt_post": lambda: T.OPTConfig(**opt, do_layer_norm_before=False, **common),
        "gpt2": lambda: T.GPT2Config(
            n_embd=HIDDEN, n_layer=3, n_head=2, n_positions=64, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common),
    }


TINY_FAMILIES = ("bert", "roberta", "mpnet", "llama", "opt", "opt_post", "gpt2")
ENCODERS = ("bert", "roberta", "mpnet")
DECODERS = ("llama", "opt", "opt_post", "gpt2")


def make_tiny_model(name: str, seed: int = 0) -> nn.Module:
    """A tiny randomly initialised ``*ForSequenceClassification`` model in eval mode."""
    from transformers import AutoModelForSequenceClassification

    cfg = _tiny_configs()[name]()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(cfg)
    return model.eval()


def tiny_batch(batch: int = 3, seq: int = 7, seed: int = 1, pad_last: int = 2) -> dict:
    """Token ids avoiding the special ids 0..2, with right padding on the last example."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad_last:
        mask[-1, -pad_last:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).logits


@torch.no_grad()
def randomize_(params, std: float = 0.1, seed: int = 0) -> None:
    """Fill the given parameters with N(0, std^2) so adapters/shortcuts are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std)


def linear_base(d_in: int, d_out: int, *, conv1d: bool = False, dtype=torch.float64,
                seed: int = 0) -> nn.Module:
    """A random frozen-able base projection: nn.Linear or GPT-2's Conv1D."""
    torch.manual_seed(seed)
    if conv1d:
        from transformers.pytorch_utils import Conv1D

        base = Conv1D(nf=d_out, nx=d_in)
        nn.init.normal_(base.weight, std=0.2)
        nn.init.normal_(base.bias, std=0.2)
        return base.to(dtype)
    return nn.Linear(d_in, d_out).to(dtype)


@pytest.fixture
def tiny_model():
    """Factory fixture: ``tiny_model("llama")`` -> a fresh tiny model."""
    return make_tiny_model


@pytest.fixture
def batch():
    return tiny_batch()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


# ---- saved tiny models and data (tests/factories.py), built once per session ----
@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def sentiment(tmp_path_factory):
    d = tmp_path_factory.mktemp("sentiment")
    return write_sentiment(d / "train.tsv", 96, seed=1), write_sentiment(d / "dev.tsv", 32, seed=2)


@pytest.fixture(scope="session")
def layout(tiny_bert):
    return bert_layout(tiny_bert)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA GPU: skipped here, run by benchmarks/device_check.sh."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
