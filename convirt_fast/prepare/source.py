"""Where a config's data is: a prepared folder as given, or SynthCXR prepared into its cache.

One resolution for the trainer and the evaluation CLI, so both read the same folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from convirt_fast.data.config import DataConfig


def data_path(data: DataConfig, seed: int, *, progress: bool = False, workers: int = 0) -> Path:
    """data.path, or for "synthcxr" the manifest of SynthCXR(data.synth_n, seed, data.synth_size)
    under data.cache_dir, prepared on first use (locked: every rank may call this)."""
    if data.path == "synthcxr":
        from convirt_fast.prepare.synthetic import ensure_synthcxr

        cache = Path(data.cache_dir) if data.cache_dir else None
        return ensure_synthcxr(cache, n=data.synth_n, seed=seed, size=data.synth_size, workers=workers,
                               progress=progress)
    if not data.path:
        raise ValueError("data.path is empty: pass --data.path=<prepared folder> (python -m convirt_fast.prepare ...)")
    return Path(data.path)
