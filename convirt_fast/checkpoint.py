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


_ABSENT = object()


def check_compatible(path: Path, saved: dict, current: dict, *, section: str = "model",
                     saved_state: dict | None = None, current_state: dict | None = None) -> None:
    """Refuse to resume a model of another architecture, naming every key that differs: the
    config fields of `section` (saved vs now), and with both state dicts the weights missing,
    unexpected or of another shape."""
    problems = []
    for key, now in current.items():  # a field the checkpoint has and this version lacks is ignored
        was = saved.get(key, _ABSENT)
        if was != now:
            problems.append(f"{section}.{key}: saved {'(absent)' if was is _ABSENT else repr(was)}, now {now!r}")
    if saved_state is not None and current_state is not None:
        problems += state_dict_differences(saved_state, current_state)
    if problems:
        raise CheckpointError(f"{path}: a checkpoint of another architecture: {'; '.join(problems)}. Resume with "
                              f"the saved values (--{section}.<field>=...), or start a new run (--train.resume=none, "
                              f"or another --train.run_name)")


def state_dict_differences(saved: dict, current: dict, show: int = 8) -> list[str]:
    """What keeps `saved` weights from loading into a model whose state dict is `current`: keys
    missing from the checkpoint, keys the model lacks, shapes that differ (the first `show` of each)."""
    def listed(what, keys):
        keys = sorted(keys)
        more = f" and {len(keys) - show} more" if len(keys) > show else ""
        return [f"{what}: {', '.join(keys[:show])}{more}"] if keys else []

    def shape(t) -> tuple:
        return tuple(getattr(t, "shape", ()))

    reshaped = [f"{k} saved {shape(saved[k])} now {shape(current[k])}" for k in sorted(set(saved) & set(current))
                if shape(saved[k]) != shape(current[k])]
    return (listed("weights missing from the checkpoint", set(current) - set(saved))
            + listed("weights this model lacks", set(saved) - set(current))
            + listed("weights of another shape", reshaped))


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
