"""What the task head reads from the encoder: the first token (``cls``, what
AutoModelForSequenceClassification builds) or the mean of the token states (``mean``).

A sentence-transformers checkpoint (the packaged MiniLM and MPNet) was trained to be read as the
mean of its token states (its ``1_Pooling/config.json``; Reimers & Gurevych, Sentence-BERT, 2019).
Its first token was never trained to summarise the input, so a head on it starts at chance and a
short run may not leave the start.  ``auto`` reads the pooling a checkpoint declares, else ``cls``.

Set on a loaded model by hooks (``set_pooling``): the model's modules and parameters stay as they
are (a BERT pooler's output is replaced, not its weights), so adapters, budgets and saved tensors
do not change with the pooling.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

POOLINGS = ("auto", "cls", "mean")
ATTR = "more_nas_pooling"  # on a model whose pooling was set here


def declared_pooling(folder) -> str | None:
    """'mean' or 'cls' as a sentence-transformers folder declares it, else None."""
    f = Path(folder) / "1_Pooling" / "config.json"
    if not f.is_file():
        return None
    cfg = json.loads(f.read_text())
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    return "cls" if cfg.get("pooling_mode_cls_token") else None


def resolve_pooling(pooling: str | None, folder) -> str:
    """The pooling to use: ``auto`` (or None) is what ``folder`` declares, else ``cls``."""
    if pooling not in (None, "auto"):
        return pooling
    return (declared_pooling(folder) if folder is not None else None) or "cls"


class MeanPooling:
    """The mean of the token states where the attention mask is 1, as sentence-transformers pools.
    The base model's pre-hook keeps its attention mask for the one pooling that follows."""

    def __init__(self):
        self.mask: torch.Tensor | None = None

    def keep_mask(self, module, args, kwargs):
        self.mask = kwargs.get("attention_mask")

    def mean(self, hidden: torch.Tensor) -> torch.Tensor:
        mask, self.mask = self.mask, None
        if mask is None or mask.dim() != 2:
            return hidden.mean(1)
        m = mask[:, : hidden.shape[1]].unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

    def pooler_output(self, module, args, output):
        """A BERT-style pooler's output: the mean of the hidden states it was given."""
        return self.mean(args[0])

    def first_token(self, module, args, output):
        """An encoder's output with the mean at token 0, for heads that read token 0 (RoBERTa, MPNet)."""
        hidden = output[0]
        hidden = torch.cat([self.mean(hidden).unsqueeze(1), hidden[:, 1:]], dim=1)
        if isinstance(output, tuple):
            return (hidden,) + tuple(output[1:])
        output["last_hidden_state"] = hidden
        return output


def set_pooling(model: nn.Module, pooling: str) -> nn.Module:
    """Make ``model``'s task head read ``pooling`` ('cls': as loaded; 'mean'); returns the model.
    A model's pooling is set once."""
    if pooling not in POOLINGS[1:]:
        raise ValueError(f"pooling {pooling!r}: expected one of {POOLINGS[1:]}")
    current = getattr(model, ATTR, "cls")
    if pooling == current:
        return model
    if current != "cls":
        raise ValueError(f"this model's pooling is already {current!r}")
    if pooling == "mean":
        base = model.base_model
        pool = MeanPooling()
        base.register_forward_pre_hook(pool.keep_mask, with_kwargs=True)
        pooler = getattr(base, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.register_forward_hook(pool.pooler_output)
        elif isinstance(getattr(base, "encoder", None), nn.Module):
            base.encoder.register_forward_hook(pool.first_token)
        else:
            raise ValueError(f"{type(model).__name__} has neither a pooler nor an encoder to pool")
    setattr(model, ATTR, pooling)
    return model


def pooling_of(model: nn.Module) -> str:
    return getattr(model, ATTR, "cls")
