"""SynthCXR: procedurally generated chest radiographs with reports, the built-in default data set.

The trainer calls `ensure_synthcxr(cache_dir, n=..., seed=...)`: it prepares the data set once
(into a folder keyed by generator version, n, seed and size) and returns the manifest path;
later calls, and other ranks waiting on the lock, return at once.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from convirt_fast.data.synthcxr.dataset import GENERATOR_VERSION, SynthConfig
from convirt_fast.data.synthcxr.findings import CATEGORIES

__all__ = ["CATEGORIES", "GENERATOR_VERSION", "SynthConfig", "default_cache_dir", "ensure_synthcxr", "synthcxr_dir"]


def default_cache_dir() -> Path:
    """$CONVIRT_CACHE, else $XDG_CACHE_HOME/convirt_fast, else ~/.cache/convirt_fast."""
    if env := os.environ.get("CONVIRT_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "convirt_fast"


def synthcxr_dir(cache_dir: Path, cfg: SynthConfig) -> Path:
    return Path(cache_dir) / f"synthcxr-v{GENERATOR_VERSION}-n{cfg.n}-seed{cfg.seed}-{cfg.size}px"


def ensure_synthcxr(
    cache_dir: Path | None = None,
    *,
    n: int = 4000,
    seed: int = 0,
    size: int = 256,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """The manifest.csv of SynthCXR(n, seed, size) under `cache_dir`, prepared on first use.

    Safe to call from every rank at once: one prepares under an exclusive file lock, the others
    wait on it and then find the finished folder. An interrupted preparation is completed (only
    missing images are generated).
    """
    from convirt_fast.data.manifest import MANIFEST_CSV, ManifestError, load_manifest

    cfg = SynthConfig(n=n, seed=seed, size=size)
    folder = synthcxr_dir(cache_dir or default_cache_dir(), cfg)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_path = folder.parent / f".{folder.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (folder / "manifest.json").is_file():
                try:
                    load_manifest(folder)  # checks columns and the content hash
                    return folder / MANIFEST_CSV
                except ManifestError:
                    pass  # damaged: prepare again (valid images are kept)
            from convirt_fast.prepare.synthetic import prepare_synthetic

            prepare_synthetic(folder, cfg, workers=workers, progress=progress)
            return folder / MANIFEST_CSV
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
