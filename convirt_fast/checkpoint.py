"""Checkpoints: atomic writes, best + last kept, exact resume, safe loading.

A checkpoint is one file written by rank 0 (`torch.save` of plain tensors and Python values,
full state dicts gathered from whatever parallelism the run uses, so a checkpoint of an FSDP2
run resumes under DDP and vice versa). It is written to a temporary file in the same folder,
fsynced and renamed over the old one: a process killed mid-write leaves the previous checkpoint
intact. Loading uses `weights_only=True` and names the file and the problem on any failure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

FORMAT = "convirt_fast.checkpoint/1"
LAST = "last.pt"
BEST = "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def atomic_torch_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict:
    """Read and validate a checkpoint file (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {error}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a convirt_fast checkpoint (format {found!r}, expected {FORMAT!r})")
    missing = [k for k in ("step", "model", "config") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return state


def check_compatible(path: Path, saved: dict, current: dict) -> None:
    """Refuse to resume a model of another architecture (the error lists the differences)."""
    different = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if different:
        raise CheckpointError(f"{path}: checkpoint of another model (saved, now): {different}")


class Checkpointer:
    """last.pt and best.pt under `folder`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def last(self) -> Path:
        return self.folder / LAST

    @property
    def best(self) -> Path:
        return self.folder / BEST

    def save(self, state: dict, *, best: bool = False) -> None:
        state = {"format": FORMAT, **state}
        atomic_torch_save(state, self.last)
        if best:
            atomic_torch_save(state, self.best)
