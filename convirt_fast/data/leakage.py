"""Leakage checks: no patient and no image file in two splits of one manifest, and no patient
or image shared between a training set and an evaluation set prepared apart."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from convirt_fast.data.manifest import Manifest, Study


class LeakageError(RuntimeError):
    """Raised when splits share patients or images; the message lists examples."""


@dataclass
class LeakageReport:
    shared_patients: dict[str, list[str]] = field(default_factory=dict)
    """patient id -> the splits (or sets) it appears in."""
    shared_images: dict[str, list[str]] = field(default_factory=dict)
    """image (path or content hash) -> the splits (or sets) it appears in."""

    @property
    def ok(self) -> bool:
        return not self.shared_patients and not self.shared_images

    def describe(self, limit: int = 5) -> str:
        parts = []
        for what, d in (("patients", self.shared_patients), ("images", self.shared_images)):
            if d:
                ex = "; ".join(f"{k} in {', '.join(v)}" for k, v in list(d.items())[:limit])
                parts.append(f"{len(d)} {what} in more than one split (e.g. {ex})")
        return "; ".join(parts) if parts else "no leakage"


def _shared(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    where: dict[str, set[str]] = defaultdict(set)
    for key, split in pairs:
        where[key].add(split)
    return {k: sorted(v) for k, v in where.items() if len(v) > 1}


def check_studies(studies: Sequence[Study], image_keys: Sequence[Sequence[str]] | None = None) -> LeakageReport:
    """Within one manifest. `image_keys[i]` identifies study i's image files (default: the paths
    in the manifest; a prepare passes the source paths, so two rows naming one file collide)."""
    keys = image_keys if image_keys is not None else [s.images for s in studies]
    return LeakageReport(
        shared_patients=_shared((s.patient_id, s.split) for s in studies),
        shared_images=_shared((k, s.split) for s, ks in zip(studies, keys) for k in ks),
    )


def assert_no_leakage(studies: Sequence[Study], image_keys=None, *, what: str = "manifest") -> None:
    report = check_studies(studies, image_keys)
    if not report.ok:
        raise LeakageError(f"{what}: leakage between splits: {report.describe()}")


def _image_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_sets(
    train: Manifest,
    evaluation: Manifest,
    *,
    train_splits: Sequence[str] = ("train",),
    eval_splits: Sequence[str] | None = None,
    hash_images: bool = True,
) -> LeakageReport:
    """Patients, and image contents (SHA-256 of the prepared files), shared between the given
    splits of a training set and an evaluation set (default: all of its splits)."""
    a = [s for s in train.studies if s.split in train_splits]
    b = [s for s in evaluation.studies if eval_splits is None or s.split in eval_splits]
    b_patients = {s.patient_id for s in b}
    shared_patients = {p: ["train set", "eval set"] for p in sorted({s.patient_id for s in a} & b_patients)}
    shared_images: dict[str, list[str]] = {}
    if hash_images:
        a_hashes = {}
        for s in a:
            for p in s.images:
                f = train.root / p
                if f.is_file():
                    a_hashes[_image_hash(f)] = f"{train.root.name}/{p}"
        for s in b:
            for p in s.images:
                f = evaluation.root / p
                if f.is_file() and (h := _image_hash(f)) in a_hashes:
                    shared_images[a_hashes[h]] = ["train set", f"eval set as {p}"]
    return LeakageReport(shared_patients=shared_patients, shared_images=shared_images)
