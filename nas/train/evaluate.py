"""The task's metrics on a model's evaluation split: AdapterTrainer.evaluate's loop (so every run's
and every trial's evaluation), with rows sorted by length so batches pad little."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn

from ..data.taskdata import row_lengths
from .support import forward_keys


@torch.no_grad()
def evaluate_model(model: nn.Module, data, batch_size: int, device, autocast=None) -> dict[str, float]:
    """The task's metrics on ``data.eval``.  Rows go sorted by length, so batches of similar
    lengths pad little (every metric here is order-free: the order changes the cost only)."""
    split, collate = data.eval, data.collator()
    keys = forward_keys(model)
    lengths = row_lengths(split)
    order = sorted(range(len(split)), key=lengths.__getitem__)
    was = model.training
    model.eval()
    preds, labels, loss_sum, loss_n, tok_loss, tok_correct, tok_total = [], [], 0.0, 0, 0.0, 0, 0
    try:
        for start in range(0, len(split), batch_size):
            cols = split[order[start:start + batch_size]]
            rows = [dict(zip(cols, vals)) for vals in zip(*cols.values())]
            batch = {k: v.to(device) for k, v in collate(rows).items() if keys is None or k in keys}
            with (autocast or contextlib.nullcontext()):
                out = model(**batch)
            if data.task_type == "causal_lm":
                logits, target = out.logits[:, :-1].float(), batch["labels"][:, 1:]
                mask = target != -100
                tok_loss += float(torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"))
                tok_total += int(mask.sum())
                tok_correct += int(((logits.argmax(-1) == target) & mask).sum())
                continue
            loss_sum += float(out.loss) * len(batch["labels"])
            loss_n += len(batch["labels"])
            logits = out.logits.float()
            preds.append((logits.reshape(-1) if data.task_type == "regression" else logits.argmax(-1)).cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
    finally:
        model.train(was)
    if data.task_type == "causal_lm":
        loss = tok_loss / max(tok_total, 1)
        return {"token_accuracy": tok_correct / max(tok_total, 1), "loss": loss,
                "perplexity": math.exp(min(loss, 50.0))}
    metrics = data.compute_metrics(np.concatenate(preds), np.concatenate(labels))
    metrics["loss"] = loss_sum / max(loss_n, 1)
    return metrics
