"""proxy_quality's data and BERT runner: GLUE TRAIN rows, length-bucketed batches, and a runner
that starts at any layer from cached (exact: frozen) layer inputs."""
from __future__ import annotations

import csv
import random
from pathlib import Path

import torch

from search_signal import GLUE as DATA  # ../shared/data/glue beside the repository (proxy_quality --data-dir)


# ---- data ---------------------------------------------------------------------------------
def read_task(task: str, data_dir=DATA) -> list[tuple[str, str, int]]:
    """(sentence 1, sentence 2, label) rows of TRAIN.tsv (csv module: quotes are literal)."""
    path = Path(data_dir) / task / "train.tsv"
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    head, body = rows[0], rows[1:]
    if task == "MRPC":
        i1, i2, il = head.index("#1 String"), head.index("#2 String"), head.index("Quality")
        out = [(r[i1], r[i2], int(r[il])) for r in body if len(r) == len(head)]
    elif task == "RTE":
        i1, i2, il = head.index("sentence1"), head.index("sentence2"), head.index("label")
        lab = {"entailment": 0, "not_entailment": 1}
        out = [(r[i1], r[i2], lab[r[il]]) for r in body if len(r) == len(head)]
    else:
        raise ValueError(f"unknown task {task!r}")
    return out


def encode(tok, rows, max_len):
    enc = tok([r[0] for r in rows], [r[1] for r in rows], truncation=True, max_length=max_len)
    return [{"input_ids": torch.tensor(ids), "token_type_ids": torch.tensor(tt),
             "label": r[2]} for ids, tt, r in zip(enc["input_ids"], enc["token_type_ids"], rows)]


def collate(examples, pad_to: int | None = None) -> dict:
    n = max(len(e["input_ids"]) for e in examples) if pad_to is None else pad_to
    ids = torch.zeros(len(examples), n, dtype=torch.long)
    tt = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        L = len(e["input_ids"])
        ids[i, :L], tt[i, :L], mask[i, :L] = e["input_ids"], e["token_type_ids"], 1
    return {"input_ids": ids, "token_type_ids": tt, "attention_mask": mask,
            "labels": torch.tensor([e["label"] for e in examples])}


def bucketed_batches(indices, lengths, bs, seed, chunk=8):
    """Batches of similar length (sorted within chunks of `chunk` batches), in random order."""
    rng = random.Random(seed)
    idx = list(indices)
    rng.shuffle(idx)
    batches = []
    for s in range(0, len(idx), bs * chunk):
        part = sorted(idx[s:s + bs * chunk], key=lambda i: lengths[i])
        batches += [part[j:j + bs] for j in range(0, len(part), bs)]
    rng.shuffle(batches)
    return [b for b in batches if len(b) == bs]


# ---- a BERT runner that can start at any layer from cached inputs ----------------------------
class Runner:
    def __init__(self, model):
        self.model, self.bert = model, model.bert
        self.layers = model.bert.encoder.layer

    def mask(self, attention_mask, emb):
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.bert.config, inputs_embeds=emb,
                                         attention_mask=attention_mask)

    @torch.no_grad()
    def hidden_states(self, batch):
        """Inputs of every layer (0..L-1) and the final output (index L)."""
        h = self.bert.embeddings(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
        m = self.mask(batch["attention_mask"], h)
        hs = [h]
        for layer in self.layers:
            h = layer(h, attention_mask=m)
            h = h[0] if isinstance(h, tuple) else h
            hs.append(h)
        return hs

    def logits_from(self, i, h, attention_mask):
        m = self.mask(attention_mask, h)
        for layer in self.layers[i:]:
            h = layer(h, attention_mask=m)
            h = h[0] if isinstance(h, tuple) else h
        return self.model.classifier(self.model.dropout(self.bert.pooler(h)))


class Cache:
    """Per-example inputs of each needed layer (float32), for train and validation."""

    def __init__(self, runner, examples: dict, layers, bs=32):
        self.layers = sorted(set(layers))
        self.h = {i: {} for i in self.layers}
        order = sorted(examples, key=lambda k: len(examples[k]["input_ids"]))
        for s in range(0, len(order), bs):
            ids = order[s:s + bs]
            batch = collate([examples[k] for k in ids])
            hs = runner.hidden_states(batch)
            for i in self.layers:
                for row, k in enumerate(ids):
                    L = len(examples[k]["input_ids"])
                    self.h[i][k] = hs[i][row, :L].clone()

    def batch(self, layer, idx, examples):
        n = max(len(examples[k]["input_ids"]) for k in idx)
        h = torch.zeros(len(idx), n, self.h[layer][idx[0]].shape[-1])
        mask = torch.zeros(len(idx), n, dtype=torch.long)
        for r, k in enumerate(idx):
            t = self.h[layer][k]
            h[r, :len(t)], mask[r, :len(t)] = t, 1
        return h, mask, torch.tensor([examples[k]["label"] for k in idx])
