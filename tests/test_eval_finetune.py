"""Fine-tuning on images whose class is plain to see (bright vs dark): it must learn them, and
stop early once the validation metric stops improving."""

from pathlib import Path

import numpy as np
import pytest
import torch

from convirt_fast.data.augment import AugmentSpec
from convirt_fast.data.manifest import Manifest, Study
from convirt_fast.eval.encoders import baseline
from convirt_fast.eval.finetune import FinetuneSettings, finetune_once
from convirt_fast.eval.tasks import build_task


@pytest.fixture(scope="module")
def bright_dark(tmp_path_factory) -> Manifest:
    from PIL import Image

    root = tmp_path_factory.mktemp("bright-dark")
    rng = np.random.default_rng(0)
    studies = []
    for i, split in enumerate(["train"] * 32 + ["validate"] * 8 + ["test"] * 8):
        bright = i % 2
        pixels = (rng.integers(150, 255, (40, 40)) if bright else rng.integers(0, 100, (40, 40))).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        studies.append(Study(f"s{i}", f"p{i}", split, (f"{i}.png",), "", {"bright": bright, "dark": 1 - bright}))
    return Manifest(Path(root), studies, ("bright", "dark"), {})


def test_finetune_learns_and_stops_early(bright_dark):
    task = build_task(bright_dark)
    assert task.kind == "multi-class"
    encoder = baseline("random", None, arch="resnet18").encoder
    settings = FinetuneSettings(lr=1e-3, warmup_steps=4, max_epochs=20, lr_patience=1, stop_patience=2, batch_size=8)
    before = [p.clone() for p in encoder.image_encoder.parameters()]
    result = finetune_once(encoder, bright_dark, task, task.train_rows, seed=0, settings=settings,
                           spec=AugmentSpec(output_size=32), device="cpu")
    assert result["metric"] == "accuracy" and result["value"] == 1.0
    assert result["epochs"] < settings.max_epochs  # early stopping ended it
    assert result["epochs"] == result["best_epoch"] + settings.stop_patience
    assert result["val_history"][result["best_epoch"] - 1] == max(result["val_history"])
    # The evaluated encoder itself is untouched: fine-tuning trains a copy.
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.image_encoder.parameters()))
