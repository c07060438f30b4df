"""Files that are either whole or absent: atomic writes (a reader, or a rerun after an
interruption, sees the old file or the complete new one, never a partial one), and reading
checkpoint files safely (`weights_only`, errors that name the file and the problem).

The bottom layer of the package: every other layer may import it; it imports nothing of ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

CHECKPOINT_FORMAT = "convirt_fast.checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (the directory entry itself reaches the disk)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: Path, mode: str = "w", *, fsync: bool = True, **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success rename it over `path`.

    `fsync` (the file, then its directory) also survives a power cut; without it the rename
    still protects against a killed process, which is what reruns of an interrupted prepare need
    (images skip it: an fsync per image costs more than encoding it, and a rerun re-decodes
    every image it keeps)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside `path` to fill; on success it replaces `path` (an existing
    folder is moved aside first, then removed), so a reader or a rerun sees the old folder or
    the complete new one. On an error the temporary folder is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    """`obj` as indented JSON through atomic_write: a file others test for (a run's summary.json
    says the run finished) is never seen half written."""
    with atomic_write(path) as f:
        f.write(json.dumps(obj, indent=2) + "\n")


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save through atomic_write (fsynced): a process killed mid-write leaves the old file."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path: str | Path) -> dict:
    """Read and validate a run checkpoint (weights_only: plain tensors and Python values only)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {error}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a convirt_fast checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    missing = [k for k in ("step", "model", "config") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return state
