"""A training run's output folder: a unique default, a refusal to reuse a folder that holds a
run, complete checkpoints only, and a failed start that leaves the folder as it was.

    out = default_output_dir("plan.json")            # runs/plan-20261130-023512
    check_output_dir(out, resume=False, overwrite=False)   # UserError naming --resume / --overwrite_output_dir
    claim = Claim(out); ...; claim.rollback()          # removes only what this command created

A checkpoint is complete when its ``more_state.pt`` is in it: the trainer writes each checkpoint
into a hidden ``.tmp-checkpoint-N`` folder and renames it into place, so ``checkpoint-N`` is
either absent or whole (AtomicCheckpoints, a mixin of the trainer).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..errors import UserError
from ..io import folder_problem, fsync_dir, fsync_tree
from .callbacks import RESUME_STATE
from .outputs import OUTPUT_DIRS, OUTPUT_FILES

# Test hook for the crash drills (tests/nas/train/test_drills.py), off unless set: seconds to sleep
# inside each checkpoint write ("SECONDS", or "SECONDS@STEP" for one step's), after its files are
# written and before the folder is renamed into place.
SAVE_PAUSE_ENV = "MORE_TRAIN_TEST_SAVE_PAUSE"
TMP_PREFIX = ".tmp-"  # a checkpoint being written (a kill -9 may leave one: it is never resumed)
_CKPT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def default_output_dir(plan_path: str | Path, root: str | Path = "runs") -> Path:
    """``runs/<plan stem>-<UTC time>``, with ``-2``, ``-3``... if that exists: never an earlier run's."""
    base = Path(root) / f"{Path(plan_path).stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def checkpoints(out: Path) -> list[Path]:
    """``checkpoint-N`` folders, oldest first."""
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _CKPT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def last_complete_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint that holds its resume state (torn ones, from a crash, are skipped)."""
    done = [p for p in checkpoints(out) if (p / RESUME_STATE).is_file()]
    return done[-1] if done else None


def run_contents(out: Path) -> list[str]:
    """What in ``out`` belongs to a run (finished or checkpointed)."""
    if not out.is_dir():
        return []
    names = [n for n in OUTPUT_FILES + OUTPUT_DIRS if n != "train.log" and (out / n).exists()]
    return names + [p.name for p in checkpoints(out)]


def check_output_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything loads, an output folder that cannot be used as asked."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite_output_dir contradict each other; pass one of them")
    kind, where = folder_problem(out) or (None, None)
    if kind == "file":
        raise UserError(f"output folder {str(out)!r} is a file; pass another --output_dir")
    if kind == "under file":
        raise UserError(f"output folder {str(out)!r} cannot be created: {str(where)!r} is a file; "
                        f"pass another --output_dir")
    if kind == "read-only":
        raise UserError(f"output folder {str(out)!r} is not writable ({str(where)!r} is read-only); "
                        f"pass another --output_dir")
    held = run_contents(out)
    if resume:
        if last_complete_checkpoint(out) is None:
            raise UserError(f"nothing to resume in {str(out)!r}: it holds no complete checkpoint-N folder; "
                            f"run without --resume")
    elif held and not overwrite:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise UserError(f"output folder {str(out)!r} holds a run ({shown}); pass --resume to continue it, "
                        f"--overwrite_output_dir to replace it, or another --output_dir")


def remove_incomplete(out: Path) -> list[str]:
    """Remove the torn checkpoints a crash left (ours, never resumable); -> their names."""
    gone = []
    for p in list(out.glob(f"{TMP_PREFIX}{PREFIX_CHECKPOINT_DIR}-*")) + checkpoints(out):
        if p.name.startswith(TMP_PREFIX) or not (p / RESUME_STATE).is_file():
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
    return gone


class Claim:
    """What ``out`` held before this command; ``rollback()`` removes only what was added since
    (the folder itself if this command made it), unless a checkpoint was written to resume from."""

    def __init__(self, out: Path):
        self.out = out
        self.existed = out.exists()
        self.before = {p.name for p in out.iterdir()} if self.existed else set()

    def new_checkpoint(self) -> Path | None:
        last = last_complete_checkpoint(self.out)
        return last if last is not None and last.name not in self.before else None

    def rollback(self) -> None:
        if not self.out.exists():
            return
        if not self.existed:
            shutil.rmtree(self.out, ignore_errors=True)
            return
        for p in self.out.iterdir():
            if p.name not in self.before:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


class AtomicCheckpoints:
    """A transformers.Trainer mixin: checkpoints written whole or not at all."""

    def _save_checkpoint(self, model, trial):
        """HF's checkpoint, written into a hidden temp folder with our resume state, then renamed
        into place: ``checkpoint-N`` is whole or absent, whenever the process dies.  Older
        checkpoints are rotated out only after the new one is complete."""
        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        tmp = run_dir / f"{TMP_PREFIX}{name}"
        if self.args.should_save:
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()  # DDP: every rank writes its RNG state into tmp
        self._get_output_dir = lambda trial=None: str(tmp)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
        self.accelerator.wait_for_everyone()
        if not self.args.should_save:
            return
        state = getattr(self, "resume_state", None)
        if state is not None:
            state.write(tmp / name)
        secs, _, at = os.environ.get(SAVE_PAUSE_ENV, "").partition("@")  # "SECONDS" or "SECONDS@STEP"
        pause = float(secs or 0) if not at or int(at) == self.state.global_step else 0.0
        if pause:  # test hook (crash drills): a window in which the checkpoint is half-written
            print(f"test hook: pausing {pause} s inside the write of {name}", file=sys.stderr, flush=True)
            time.sleep(pause)
        final = run_dir / name
        fsync_tree(tmp / name)  # on disk before it is published and older ones are rotated out
        if final.exists():  # a step saved twice (e.g. after a resume): the new one wins
            shutil.rmtree(final)
        os.replace(tmp / name, final)
        fsync_dir(run_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        rotate_checkpoints(
            output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
