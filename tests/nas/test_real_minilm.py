"""The real packaged MiniLM (BERT, 6 layers, hidden 384) with a mixed plan learns on real
SST-2 sentences.  Slow, but CI runs it (``-m "not slow or ci"``)."""
from __future__ import annotations

import csv

import pytest
import torch

from nas import Plan, adapters, apply_plan, discover, merge_plan, shortcut_set
from tests.factories import require_glue

L = "bert.encoder.layer"

pytestmark = [pytest.mark.slow, pytest.mark.ci]


def read_sst2(glue, n: int) -> tuple[list[str], list[int]]:
    """The first n sentences of each label, interleaved, so the batch is balanced."""
    by_label: dict[int, list[str]] = {0: [], 1: []}
    with (glue / "SST-2" / "train.tsv").open(newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            lab = int(row["label"])
            if len(by_label[lab]) < n // 2:
                by_label[lab].append(row["sentence"].strip())
            if all(len(v) >= n // 2 for v in by_label.values()):
                break
    texts, labels = [], []
    for a, b in zip(by_label[0], by_label[1]):
        texts += [a, b]
        labels += [0, 1]
    return texts, labels


def test_mixed_plan_trains_on_real_minilm(request):
    glue = require_glue(request.node, "SST-2")
    from nas.models import load_model, load_tokenizer

    torch.manual_seed(0)
    model = load_model(None, num_labels=2)
    tok = load_tokenizer(None)
    layout = discover(model)
    assert (layout.family, layout.num_layers, layout.hidden_size) == ("bert", 6, 384)

    plan = Plan(
        model={"name_or_path": "minilm"},
        modules={
            f"{L}.0.attention.self.query": {"type": "lora", "rank": 8},
            f"{L}.0.attention.self.value": {"type": "lora", "rank": 8},
            f"{L}.3.attention.self.value": {"type": "lora", "rank": 4},
            f"{L}.1.intermediate.dense": {"type": "more", "nblocks": 4, "rank": 4},
            f"{L}.4.intermediate.dense": {"type": "more", "nblocks": 4, "rank": 4},
            f"{L}.5.output.dense": {"type": "more", "nblocks": 8, "rank": 2},
            f"{L}.2.attention.output.dense": {"type": "circulant"},
            f"{L}.5.attention.output.dense": {"type": "circulant"},
        },
        shortcuts={"2.s_cut": {"rank": 8}, "4.s_res2": {"rank": 4}, "5.s_in": {"rank": 8}},
    )
    apply_plan(model, plan, layout)
    assert len(adapters(model)) == 8 and len(list(shortcut_set(model).items())) == 3
    head = {n for n, _ in model.named_parameters() if n.startswith("classifier")}
    trainable = [p for p in model.parameters() if p.requires_grad]
    adapter_params = sum(p.numel() for n, p in model.named_parameters()
                         if p.requires_grad and n not in head)
    assert adapter_params == plan.count_params(layout)

    texts, labels = read_sst2(glue, 32)
    assert len(texts) == 32 and sum(labels) == 16
    batch = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    y = torch.tensor(labels)

    # Dropout stays off (eval mode) so the fixed-batch loss curve is deterministic; the
    # gradients flow the same way.  AdamW moves every weight by about lr per step, so
    # 8 steps at 2e-3 take the near-chance loss (~0.69) down by roughly 0.06.
    opt = torch.optim.AdamW(trainable, lr=2e-3, weight_decay=0.0)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = torch.nn.functional.cross_entropy(model(**batch).logits, y).item()
    curve = losses + [final]
    assert all(b < a for a, b in zip(curve, curve[1:])), f"loss did not fall every step: {curve}"
    assert final < losses[0] - 0.04, f"loss did not decrease clearly: {curve}"
    # Every adapter moved off its init (B/L2/c were zero).
    for name, a in adapters(model).items():
        assert any(p.abs().sum() > 0 for p in a.trainable_parameters()), name
    # Merging keeps the trained function.
    with torch.no_grad():
        before = model(**batch).logits
        merge_plan(model)
        after = model(**batch).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
