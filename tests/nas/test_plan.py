"""The plan: JSON round trip, atomic save, validation that lists every problem, and the
apply -> merge verbs on tiny models with a mixed LoRA + MoRe + SURM + shortcut plan."""
from __future__ import annotations

import json
import os

import pytest
import torch

from nas import Plan, PlanError, UserError, adapters, apply_plan, discover, merge_plan, shortcut_set
from nas.inject import trainable_state_dict
from search_spaces.anatomy import HEAD_NAMES
from search_spaces.attach import SHORTCUTS_ATTR
from nas.plan import SCHEMA_VERSION
from search_spaces import SPACES, Adapter

from tests.conftest import make_tiny_model, randomize_, tiny_batch


def full_plan() -> Plan:
    return Plan(
        model={"name_or_path": "tiny-bert", "revision": None, "family": "bert", "base_params": 123},
        task={"name": "sst2", "num_labels": 2},
        budget={"spec": "0.5%", "params": 1000, "counts": "adapters+shortcuts"},
        modules={
            "bert.encoder.layer.0.attention.self.query": {"type": "lora", "rank": 4},
            "bert.encoder.layer.1.intermediate.dense": {"type": "more", "nblocks": 4, "rank": 2},
            "bert.encoder.layer.1.attention.output.dense": {"type": "circulant", "enabled": False},
        },
        shortcuts={"1.s_cut": {"rank": 2, "alpha": 4.0}, "0.s_in": {"rank": 8}},
        training={"lr": 1e-3, "epochs": 2, "batch_size": 16, "allocation": "static"},
        trainable_params=42,
        provenance={"scores": {"a": 1.5}, "trial": 3},
    )


def mixed_plan(layout) -> Plan:
    """One choice of every family per layer, cycled over the roles, plus some shortcuts."""
    choices = [{"type": "lora", "rank": 4}, {"type": "more", "nblocks": 4, "rank": 2},
               {"type": "circulant"}, {"type": "toeplitz"}, {"type": "kronecker", "rank": 4},
               {"type": "ldr", "rank": 2}, {"type": "more", "nblocks": 2, "rank": 3},
               {"type": "lora", "rank": 2, "alpha": 3.0}]
    modules = {m.name: dict(choices[i % len(choices)]) for i, m in enumerate(layout.modules)
               if i % 7 != 6}  # leave some modules without an adapter
    last = layout.num_layers - 1
    shortcuts = {f"{last}.s_cut": {"rank": 2}, "0.s_res1": {"rank": 4}, f"{last}.s_in": {}}
    return Plan(model={"name_or_path": "tiny"}, modules=modules, shortcuts=shortcuts)


# ---- JSON ----------------------------------------------------------------------------------

def test_json_round_trip(tmp_path):
    plan = full_plan()
    path = plan.save(tmp_path / "sub" / "plan.json")  # parent folders are created
    assert path.is_file()
    loaded = Plan.load(path)
    assert loaded == plan
    assert loaded.to_dict() == plan.to_dict()
    d = plan.to_dict()
    assert list(d)[0] == "schema_version" and d["schema_version"] == SCHEMA_VERSION
    assert json.loads(path.read_text()) == d
    # Stable: dict -> plan -> dict and save -> load -> save give identical output.
    assert Plan.from_dict(json.loads(json.dumps(d))).to_dict() == d
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == path.read_text()
    assert plan.kinds() == {"lora", "more", "circulant"}


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    Plan(model={"name_or_path": "old"}).save(path)
    before = path.read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        full_plan().save(path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]  # no temp file left
    monkeypatch.undo()
    full_plan().save(path)
    assert Plan.load(path) == full_plan()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_saved_plan_has_the_usual_file_mode(tmp_path):
    """Not mkstemp's private 0600: a plan is shared like any file the user writes."""
    old = os.umask(0o022)
    try:
        full_plan().save(tmp_path / "plan.json")
    finally:
        os.umask(old)
    assert (tmp_path / "plan.json").stat().st_mode & 0o777 == 0o644


def test_from_dict_lists_every_problem():
    bad = {
        "schema_version": 99,
        "model": {},
        "modules": {"a.b": {"type": "nope"}, "c.d": "lora", "e.f": {"type": "lora", "enabled": "yes"}},
        "shortcuts": {"zero.s_in": {}, "1.s_wrong": {}},
        "colour": "blue",
        "training": [1, 2],
    }
    with pytest.raises(PlanError) as e:
        Plan.from_dict(bad)
    err = e.value
    assert isinstance(err, UserError) and isinstance(err, ValueError)
    msg = str(err)
    expected = ["schema_version is 99", "'colour'", "'training' must be an object",
                "model.name_or_path is missing", "unknown type 'nope'", "modules['c.d'] must be",
                "'enabled' must be true or false", "'zero.s_in'", "'1.s_wrong'"]
    for frag in expected:
        assert frag in msg, f"{frag!r} missing from:\n{msg}"
    assert len(err.problems) == len(expected)
    assert f"({len(expected)} problem(s))" in msg
    with pytest.raises(PlanError, match="expected a JSON object"):
        Plan.from_dict([1, 2])


def test_schema_version_checked_alone():
    d = Plan(model={"name_or_path": "m"}).to_dict()
    Plan.from_dict(d)
    for v in (0, 2, "1", None):
        with pytest.raises(PlanError, match="schema_version") as e:
            Plan.from_dict({**d, "schema_version": v})
        assert len(e.value.problems) == 1


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist") as e:
        Plan.load(tmp_path / "missing.json")
    assert not isinstance(e.value, PlanError)
    p = tmp_path / "broken.json"
    p.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.load(p)
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PlanError):
        Plan.load(p)
    p.write_text(json.dumps({**full_plan().to_dict(), "schema_version": 7}))
    with pytest.raises(PlanError, match=str(p.name)):
        Plan.load(p)


def test_validate_lists_every_problem_against_the_model():
    model = make_tiny_model("bert")
    layout = discover(model)
    L = "bert.encoder.layer"
    plan = Plan(
        model={"name_or_path": "tiny"},
        modules={
            f"{L}.0.attention.self.query": {"type": "lora", "rank": 4},  # fine
            f"{L}.7.attention.self.query": {"type": "lora"},  # no layer 7
            "classifier": {"type": "lora"},  # exists but is not adaptable
            f"{L}.0.attention.self.key": {"type": "bogus"},
            f"{L}.0.attention.self.value": {"type": "lora", "rank": 0},
            f"{L}.1.intermediate.dense": {"type": "kronecker", "rank": 40},  # 32 -> 48: too big
            f"{L}.1.output.dense": {"type": "more", "nblocks": 100},  # > d_in = 48
            f"{L}.1.attention.self.query": {"type": "lora", "rnk": 2},  # typo
            f"{L}.1.attention.self.key": "lora",  # not an object
        },
        shortcuts={"0.s_cut": {}, "9.s_in": {}, "bad-key": {}, "1.s_res1": {"rank": 0}},
    )
    with pytest.raises(PlanError) as e:
        plan.validate(layout)
    msg, problems = str(e.value), e.value.problems
    assert len(problems) == 12, msg
    for frag in [f"{L}.7.attention.self.query", "'classifier'", "'bogus'", "rank must be a positive",
                 "kronecker: rank=40", "nblocks=100 exceeds d_in=48", "'rnk'", f"{L}.1.attention.self.key",
                 "0.s_cut", "9.s_in", "bad-key", "'1.s_res1': rank must be a positive integer"]:
        assert frag in msg, f"{frag!r} missing from:\n{msg}"
    # the fine choice is not reported as a problem
    assert not any(p.startswith(f"module '{L}.0.attention.self.query'") for p in problems)
    # apply_plan validates first and leaves the model untouched.
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(PlanError):
        apply_plan(model, plan, layout)
    assert not adapters(model) and shortcut_set(model) is None
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


def test_shortcuts_rejected_for_unknown_family():
    from tests.search_spaces.test_anatomy import CustomModel

    model = CustomModel()
    with pytest.warns(UserWarning):
        layout = discover(model)
    plan = Plan(model={"name_or_path": "c"}, modules={"blocks.0.mix": {"type": "lora", "rank": 0}},
                shortcuts={"1.s_in": {}})
    with pytest.raises(PlanError) as e:
        plan.validate(layout)
    assert len(e.value.problems) == 2 and "not supported" in str(e.value)


# ---- against a model -----------------------------------------------------------------------

def _trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", ["bert", "llama", "gpt2", "opt"])
def test_apply_then_merge_gives_same_logits(name):
    model, batch = make_tiny_model(name), tiny_batch()
    with torch.no_grad():
        base = model(**batch).logits
    layout = discover(model)
    plan = mixed_plan(layout)
    plan.modules[layout.modules[0].name]["enabled"] = False  # a disabled adapter too
    apply_plan(model, plan, layout)
    ads = adapters(model)
    assert set(ads) == set(plan.modules)
    assert {a.kind for a in ads.values()} == {"lora", "more", "circulant", "toeplitz",
                                              "kronecker", "ldr"}
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base)  # every update is zero at init
    randomize_([p for n, p in model.named_parameters() if p.requires_grad
                and not any(n.startswith(h) for h in HEAD_NAMES)], std=0.05)
    with torch.no_grad():
        adapted = model(**batch).logits
    assert (adapted - base).abs().max() > 1e-3
    report = merge_plan(model)
    assert sorted(report.merged) == sorted(plan.modules)
    assert sorted(report.not_foldable) == sorted(f"shortcut {k}" for k in plan.shortcuts)
    assert not adapters(model)
    assert not any(isinstance(m, Adapter) for m in model.modules())
    for mname in plan.modules:
        assert type(model.get_submodule(mname)).__name__ in ("Linear", "Conv1D")
    with torch.no_grad():
        merged = model(**batch).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
    # Removing the (unfoldable) shortcuts leaves the merged adapters only: still not base.
    shortcut_set(model).remove()
    with torch.no_grad():
        assert (model(**batch).logits - base).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["bert", "llama", "gpt2"])
def test_only_adapters_shortcuts_and_head_are_trainable(name):
    model = make_tiny_model(name)
    layout = discover(model)
    plan = mixed_plan(layout)
    apply_plan(model, plan, layout)
    ads = adapters(model)
    expected = set()
    for aname, a in ads.items():
        expected |= {f"{aname}.{pn}" for pn, _ in a.named_parameters(recurse=False)}
        assert not any(p.requires_grad for p in a.base.parameters())
    expected |= {f"{SHORTCUTS_ATTR}.{n}" for n, _ in shortcut_set(model).named_parameters()}
    head = {n for n, _ in model.named_parameters() if n.split(".")[0] in HEAD_NAMES}
    assert head  # the task head exists and ...
    assert _trainable_names(model) == expected | head  # ... is the only extra trainable part
    # Plan.count_params == real adapter + shortcut parameters, head excluded.
    real = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n not in head)
    assert plan.count_params(layout) == real
    # The state to save is exactly that set, too.
    assert set(trainable_state_dict(model)) == expected | head


def test_count_params_enabled_only():
    model = make_tiny_model("bert")
    layout = discover(model)
    plan = full_plan()
    total = plan.count_params(layout)
    off = 32  # the disabled circulant on a 32 -> 32 projection: max(d_in, d_out) parameters
    assert plan.count_params(layout, enabled_only=True) == total - off
    assert total == 4 * (32 + 32) + 4 * 2 * (8 + 12) + off + 2 * 2 * 32 + 2 * 8 * 32
    apply_plan(model, plan, layout)
    real = sum(p.numel() for n, p in model.named_parameters()
               if p.requires_grad and not n.startswith("classifier"))
    assert real == total
    disabled = adapters(model)["bert.encoder.layer.1.attention.output.dense"]
    assert disabled.enabled is False


def test_from_candidates_with_default_space():
    model = make_tiny_model("llama")
    layout = discover(model)
    cands = SPACES["default"].candidates(layout)
    by_target: dict[str, list] = {}
    for c in cands:
        by_target.setdefault(c.target, []).append(c)
    # Every module gets candidates of every family; every layer its shortcuts (no 0.s_cut).
    assert {c.kind for c in cands} == {"lora", "more", "circulant", "toeplitz", "kronecker",
                                       "ldr", "shortcut"}
    assert "0.s_cut" not in by_target and "1.s_cut" in by_target
    assert len([c for c in cands if c.is_shortcut]) == 4 * layout.num_layers - 1
    # Pick a different choice per module, cycling through the list, plus two shortcuts.
    selected = [opts[i % len(opts)] for i, (t, opts) in enumerate(sorted(by_target.items()))
                if not opts[0].is_shortcut]
    selected += by_target["1.s_cut"] + by_target["0.s_res2"]
    plan = Plan.from_candidates(selected, layout, model={"name_or_path": "tiny-llama"})
    assert plan.model["family"] == "llama"
    assert plan.trainable_params == sum(c.params for c in selected) == plan.count_params(layout)
    assert set(plan.modules) == {m.name for m in layout.modules}
    assert set(plan.shortcuts) == {"1.s_cut", "0.s_res2"}
    assert len(plan.kinds()) >= 4
    plan.validate(layout)
    Plan.from_dict(json.loads(plan.to_json()))  # what search writes, training can read
    apply_plan(model, plan, layout)
    real = sum(p.numel() for n, p in model.named_parameters()
               if p.requires_grad and not n.startswith("score"))
    assert real == plan.trainable_params
    with pytest.raises(ValueError, match="two choices"):
        Plan.from_candidates(by_target[layout.modules[0].name][:2], layout)


@pytest.mark.parametrize("doc, problem", [
    ({"schema_version": 999, "modules": 3}, "'modules' must be an object, got int"),
    ({"schema_version": 1, "model": {"name_or_path": "m"}, "training": {"lr": "fast"}},
     "training.lr must be a number > 0, got 'fast'"),
    ({"schema_version": 1, "model": {"name_or_path": "m"}, "training": {"batch_size": 0}},
     "training.batch_size must be an integer >= 1, got 0"),
    ({"schema_version": 1, "model": [1]}, "'model' must be an object, got list"),
    ({"schema_version": 1, "model": {"name_or_path": "m"}, "modules": {"x": {"type": ["lora"]}}},
     "unknown type \\['lora'\\]"),
    ({"schema_version": 1, "model": {"name_or_path": "m"}, "trainable_params": "many"},
     "trainable_params must be a non-negative integer"),
])
def test_plan_field_types_checked_before_reading(doc, problem):
    from nas.errors import PlanError

    with pytest.raises(PlanError, match=problem):
        Plan.from_dict(doc)
