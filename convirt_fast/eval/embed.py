"""Embedding manifest rows with the evaluation transform (zero-pad to square, resize), once.

The loader works on splits; evaluation wants arbitrary rows (a label subset, a user's retrieval
CSV), so a sub-manifest holding exactly those rows, in that order, is handed to it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from convirt_fast.data.manifest import Manifest, Study

_SPLIT = "test"  # the split name the sub-manifest's rows carry (any valid one)


def subset_manifest(manifest: Manifest, rows: list[int]) -> Manifest:
    """A manifest of `rows` (in that order), all in one split; row i of it = rows[i]."""
    studies = [dataclasses.replace(manifest.studies[r], split=_SPLIT) for r in rows]
    return Manifest(root=manifest.root, studies=studies, label_columns=manifest.label_columns, meta=manifest.meta)


def image_loader(manifest: Manifest, *, spec, device, batch_size: int = 64, workers: int = 0):
    from convirt_fast.data.loader import ConVIRTLoader

    return ConVIRTLoader(manifest, None, split=_SPLIT, train=False, backend="torch", device=device,
                         batch_size=batch_size, num_workers=workers, drop_last=False, augment=spec)


@torch.no_grad()
def embed_images(fn: Callable[[torch.Tensor], torch.Tensor], manifest: Manifest, rows: list[int], *, spec, device,
                 batch_size: int = 64, workers: int = 0) -> torch.Tensor:
    """fn(images) for the given manifest rows, in that order, as a float32 CPU tensor."""
    if not rows:
        raise ValueError(f"{manifest.root}: no rows to embed")
    sub = subset_manifest(manifest, rows)
    out: list[torch.Tensor | None] = [None] * len(rows)
    for batch in image_loader(sub, spec=spec, device=device, batch_size=batch_size, workers=workers):
        for i, v in zip(batch["rows"].tolist(), fn(batch["images"]).float().cpu()):
            out[i] = v
    missing = [rows[i] for i, v in enumerate(out) if v is None]
    if missing:
        ids = [manifest.studies[r].study_id for r in missing[:5]]
        raise ValueError(f"{manifest.root}: {len(missing)} studies without an embedding (unreadable images?): {ids}")
    return torch.stack(out)  # type: ignore[arg-type]


def study(study_id: str, image: str, split: str = _SPLIT) -> Study:
    """A manifest row for an image outside any prepared manifest (a user's retrieval CSV)."""
    return Study(study_id=study_id, patient_id=study_id, split=split, images=(image,), report="")
