"""`prepare check`: the integrity of prepared folders (every recorded file hashed in full) and
leakage between a prepared training set and a prepared evaluation set."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from convirt_fast.data.leakage import LeakageReport, check_sets, check_studies
from convirt_fast.data.manifest import load_manifest


def check_prepared(
    train: Path,
    evaluation: Path | None = None,
    *,
    train_splits: Sequence[str] = ("train",),
    eval_splits: Sequence[str] | None = None,
    hash_images: bool = True,
    full_hash: bool = True,
) -> LeakageReport:
    """Within `train` alone (all splits) when `evaluation` is None; else `train`'s given splits
    against `evaluation`'s (default: all of them), by patient id and by image content. Both
    folders are first verified: manifest.csv and the sentence index hashed in full (`full_hash`;
    False: the loader's cheap size and mtime check), a ManifestError naming a changed file."""
    a = load_manifest(Path(train), full_hash=full_hash)
    if evaluation is None:
        return check_studies(a.studies)
    b = load_manifest(Path(evaluation), full_hash=full_hash)
    return check_sets(a, b, train_splits=train_splits, eval_splits=eval_splits, hash_images=hash_images)
