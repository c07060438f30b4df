"""Embedding manifest rows with the evaluation transform (zero-pad to square, resize).

The loader draws from any rows of the manifest (`rows=`): a label subset, a split, a user's
retrieval CSV. `Embedder` keeps one loader (and its worker processes) for a fixed list of rows
embedded again and again (fine-tuning's validation each epoch); `embed_images` embeds once.
"""

from __future__ import annotations

from typing import Callable

import torch

from convirt_fast.data.manifest import Manifest, Study


def image_loader(manifest: Manifest, rows: list[int], *, spec, device, batch_size: int = 64, workers: int = 0,
                 shuffle: bool = False, seed: int = 0):
    """A loader of `rows`' images with the evaluation transform, every batch kept (none dropped).
    shuffle: the rows in a new order every epoch, from (seed, epoch) (`set_epoch`); else in the
    order given."""
    from convirt_fast.data.loader import ConVIRTLoader

    return ConVIRTLoader(manifest, None, rows=rows, train=False, shuffle=shuffle, seed=seed, backend="torch",
                         device=device, batch_size=batch_size, num_workers=workers, drop_last=False, augment=spec)


class Embedder:
    """fn(images) for a fixed list of manifest rows, as often as asked, from one loader.

        embed = Embedder(manifest, rows, spec=spec, device=device)
        vectors = embed(model)      # (len(rows), D) float32 on the CPU, row i = rows[i]
        embed.close()               # stops its worker processes (also on garbage collection)

    A row listed twice is embedded once."""

    def __init__(self, manifest: Manifest, rows: list[int], *, spec, device, batch_size: int = 64,
                 workers: int = 0):
        rows = [int(r) for r in rows]
        if not rows:
            raise ValueError(f"{manifest.root}: no rows to embed")
        self.manifest, self.rows = manifest, rows
        self._unique = list(dict.fromkeys(rows))
        self.loader = image_loader(manifest, self._unique, spec=spec, device=device, batch_size=batch_size,
                                   workers=workers)

    @torch.no_grad()
    def __call__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        position = {r: i for i, r in enumerate(self._unique)}
        out: list[torch.Tensor | None] = [None] * len(self._unique)
        self.loader.set_epoch(0)
        for batch in self.loader:
            for row, v in zip(batch["rows"].tolist(), fn(batch["images"]).float().cpu()):
                out[position[row]] = v
        missing = [r for r, v in zip(self._unique, out) if v is None]
        if missing:
            ids = [self.manifest.studies[r].study_id for r in missing[:5]]
            raise ValueError(f"{self.manifest.root}: {len(missing)} studies without an embedding "
                             f"(unreadable images?): {ids}")
        unique = torch.stack(out)  # type: ignore[arg-type]
        if len(self._unique) == len(self.rows):
            return unique
        return unique[torch.tensor([position[r] for r in self.rows])]

    def close(self) -> None:
        self.loader.close()


def embed_images(fn: Callable[[torch.Tensor], torch.Tensor], manifest: Manifest, rows: list[int], *, spec, device,
                 batch_size: int = 64, workers: int = 0) -> torch.Tensor:
    """fn(images) for the given manifest rows, in that order, as a float32 CPU tensor."""
    embedder = Embedder(manifest, rows, spec=spec, device=device, batch_size=batch_size, workers=workers)
    try:
        return embedder(fn)
    finally:
        embedder.close()


def study(study_id: str, image: str, split: str = "test") -> Study:
    """A manifest row for an image outside any prepared manifest (a user's retrieval CSV)."""
    return Study(study_id=study_id, patient_id=study_id, split=split, images=(image,), report="")
