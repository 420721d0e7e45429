"""Training checkpoints: written atomically, found again on `--resume`, pruned to the latest
few plus the best by eval loss.

A checkpoint is a folder `step-0000200/` holding the adapter (peft's own files) and
`trainer_state.pt` (optimizer, scheduler, RNG states, counters). It is assembled under a
temporary name and renamed into place (`publish_folder`, which the finished expert goes
through too), so a run killed mid-save leaves the previous checkpoint intact and never a
half-written one. A continued expert replaces the old one the same way: both folders
exchange names in one step where the OS can (Linux), and the old one is then removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir(folder: Path, step: int) -> Path:
    return folder / f"step-{step:07d}"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: Path, step: int, peft_model: Any, adapter_state: dict[str, Any], state: dict[str, Any]
) -> Path:
    """Write checkpoint `step` under `folder` atomically and return its path."""
    final = step_dir(folder, step)
    staging = folder / f".tmp-{final.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    peft_model.save_pretrained(staging, state_dict=adapter_state)
    torch.save(state, staging / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    publish_folder(staging, final)
    return final


def publish_folder(staging: Path, final: Path) -> None:
    """Make the folder `staging` appear as `final` in one rename, its files on disk first.

    Before the rename `final` is as it was; after it, complete. A `final` that exists
    (an expert being replaced by its continuation) trades places with `staging` and is
    then removed. Files in sub-folders are not synced again (checkpoints were when they
    were written).
    """
    for path in staging.iterdir():
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    _fsync_folder(staging)
    if final.exists() and any(final.iterdir()):
        _exchange(staging, final)
        _fsync_folder(final.parent)
        shutil.rmtree(staging, ignore_errors=True)  # now the old `final`
        return
    os.replace(staging, final)
    _fsync_folder(final.parent)  # the rename itself


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> None:
    """Swap the names of folders `a` and `b`: atomically with Linux's renameat2, else in
    two renames (with a moment in which `b` is absent)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name, use_errno=True) if name else None
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
        if result == 0:
            return
        # EINVAL/ENOSYS: the file system or kernel cannot exchange; rename twice instead.
    aside = b.with_name(f".{b.name}.old")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(b, aside)
    os.replace(a, b)
    os.replace(aside, a)


def _fsync_folder(path: Path) -> None:
    # Folders cannot be opened for syncing everywhere (Windows); the rename still happened.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(folder: Path) -> Path | None:
    found = checkpoints(folder)
    return found[-1][1] if found else None


def load_state(path: Path) -> dict[str, Any]:
    # Python's random state is a tuple of ints, which the weights-only unpickler accepts.
    return dict(torch.load(path / STATE_FILE, map_location="cpu", weights_only=True))


def prune(folder: Path, keep: int, best_step: int | None) -> None:
    """Remove all but the `keep` newest checkpoints and the best one; clear stale temps."""
    found = checkpoints(folder)
    for step, path in found[:-keep] if keep else found:
        if step != best_step:
            shutil.rmtree(path, ignore_errors=True)
    for path in folder.glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)
