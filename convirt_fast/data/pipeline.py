"""The loaders of a run: training pairs, and validation pairs when the data has enough of them."""

from __future__ import annotations

import torch

from convirt_fast.data.config import DataConfig


def build_loaders(manifest, tokenizer, data: DataConfig, *, seed: int, device: torch.device, rank: int = 0,
                  world_size: int = 1):
    """(train loader, validation loader or None). Validation: the held-out pairs with the
    evaluation transform, a fixed sentence draw (epoch 0) and full batches only (the loss depends
    on N), so every validation sees the same batches; None when they fill no global batch."""
    from convirt_fast.data.loader import ConVIRTLoader

    common = dict(batch_size=data.batch_size, augment=data.augment, backend=data.backend, device=device,
                  num_workers=data.num_workers, seed=seed, rank=rank, world_size=world_size,
                  max_length=data.max_length, decode=data.decode)
    train = ConVIRTLoader(manifest, tokenizer, rows=manifest.split_indices("train"), **common)
    val_rows = manifest.split_indices("validate")
    if len(val_rows) < data.batch_size * world_size:
        return train, None
    return train, ConVIRTLoader(manifest, tokenizer, rows=val_rows, train=False, drop_last=True, **common)
