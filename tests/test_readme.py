"""The README's commands run as written: every fenced command is either run here (with the packaged
model in place of a Hub name and a few short rows, nothing else changed) or checked as far as this machine can
(its flags parse, the script is valid bash, the pip extra exists), and a new command must be one of
these to pass."""
from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from nas.cli import search as search_cli
from nas.cli import train as train_cli
from nas.models import packaged_minilm_path
from tests.factories import GLUE, require_glue

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# What a user's model, data and sizes become here: the packaged MiniLM (as ./my-model too; a
# budget in percent means nothing on a tiny random model), and a few rows of short sequences.
SEARCH_TINY = ["--max-train-samples", "48", "--max-length", "32", "-q"]
TRAIN_TINY = ["--max_steps", "2", "--max_train_samples", "32", "--max_eval_samples", "16", "--no-progress"]


def commands(text: str = README) -> list[list[str]]:
    """Every command of the bash blocks in ``text``, continuation lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if words := shlex.split(line, comments=True):
                out.append(words)
    return out


def cli_args(words: list[str]) -> tuple[str, list[str]] | None:
    """('search' | 'train', its arguments) for a more-search / more-train / torchrun line."""
    if words[0] in ("more-search", "more-train"):
        return words[0].removeprefix("more-"), words[1:]
    if words[0] == "torchrun":
        at = words.index("-m")
        assert words[at + 1] == "nas.cli.train", words
        return "train", words[at + 2:]
    return None


def test_every_command_is_known():
    """A command of a kind this file does not check fails here, so none goes unchecked."""
    cmds = commands()
    assert len(cmds) >= 8, cmds
    for words in cmds:
        assert cli_args(words) or words[:2] in (["bash", "scripts/demo.sh"], ["bash", "scripts/test.sh"]) \
            or words[:2] == ["pip", "install"], f"README command not checked by tests/test_readme.py: {words}"


def test_cli_flags_parse():
    """Every more-search / more-train / torchrun line parses with today's flags."""
    parsers = {"search": search_cli.build_parser(), "train": train_cli.build_parser()}
    lines = [c for c in map(cli_args, commands()) if c]
    assert {kind for kind, _ in lines} == {"search", "train"}
    for kind, args in lines:
        parsers[kind].parse_args(args)  # exits 2 on an unknown flag or a bad choice


def test_scripts_and_extras_exist():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for words in commands():
        if words[0] == "bash":
            subprocess.run(["bash", "-n", str(ROOT / words[1])], check=True)
        elif words[:2] == ["pip", "install"]:
            for spec in words[2:]:
                m = re.fullmatch(r"more-nas\[(\w+)\]", spec)
                assert m and m.group(1) in extras, f"{spec}: no such extra in pyproject.toml"


def tiny(kind: str, args: list[str], model: str, i: int) -> list[str] | None:
    """The user's command with the tiny model and sizes; None where this machine cannot run it."""
    if "--storage" in args:
        return None  # a PostgreSQL server: tests/nas/search/test_postgres_search.py runs that command
    if kind == "search":
        if "--model" in args and not args[args.index("--model") + 1].startswith("./"):
            args[args.index("--model") + 1] = model  # a Hub name: this machine is offline
        if "--data-dir" not in args:
            args += ["--data-dir", "glue"]  # a Hub task name without it downloads
        return args + SEARCH_TINY
    return args + TRAIN_TINY + ["--output_dir", f"run-{i}"]


@pytest.mark.ci
def test_usage_commands_run(tmp_path, monkeypatch, request):
    """The usage section end to end, in order: its searches write the plans its trainings read."""
    require_glue(request.node, "MRPC")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "glue").symlink_to(GLUE)
    model = str(packaged_minilm_path())
    (tmp_path / "my-model").symlink_to(model)
    ran = 0
    for i, (kind, args) in enumerate(c for c in map(cli_args, fenced_usage()) if c):
        if (argv := tiny(kind, list(args), model, i)) is None:
            continue
        main = search_cli.main if kind == "search" else train_cli.main
        assert main(argv) == 0, (kind, argv)
        ran += 1
    assert ran >= 6
    assert (tmp_path / "plan.json").is_file() and (tmp_path / "mrpc.json").is_file()
    assert (tmp_path / "run-4" / "merged" / "config.json").is_file()  # --merge


def fenced_usage() -> list[list[str]]:
    """The commands of the usage section (the setup scripts are CI's own), torchrun and pip aside."""
    usage = README.split("## Usage", 1)[1].split("\n## ", 1)[0]
    return [words for words in commands(usage) if words[0] not in ("torchrun", "pip")]
