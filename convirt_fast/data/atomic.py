"""Atomic file writes: a reader (or a rerun after an interruption) sees the old file or the
complete new one, never a partial one."""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_write(path: Path, mode: str = "w", *, fsync: bool = True, **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success rename it over `path`.

    `fsync` also survives a power cut; without it the rename still protects against a killed
    process, which is what reruns of an interrupted prepare need (images skip it: an fsync per
    image costs more than encoding it, and a rerun re-decodes every image it keeps)."""
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
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
