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


def test_finetune_reuses_one_loader_reshuffled_each_epoch_with_the_seed(bright_dark, monkeypatch):
    """One training loader for the whole run (set_epoch each epoch, its workers kept), one for
    validation, one for the test: no loader per epoch. Each epoch is a new permutation of the
    training rows drawn from (the run's seed, epoch); the same seed gives the same epochs."""
    import convirt_fast.data.loader as loader_module
    from convirt_fast.data.study_sampler import StudySampler

    made = []

    class Spy(loader_module.ConVIRTLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.seen: dict[int, list[int]] = {}
            made.append(self)

        def __iter__(self):
            epoch = self.epoch
            for batch in super().__iter__():
                self.seen.setdefault(epoch, []).extend(batch["rows"].tolist())
                yield batch

    monkeypatch.setattr(loader_module, "ConVIRTLoader", Spy)
    task = build_task(bright_dark)
    settings = FinetuneSettings(warmup_steps=2, max_epochs=3, batch_size=8)
    runs = []
    for seed in (0, 0, 1):
        made.clear()
        encoder = baseline("random", None, arch="resnet18").encoder
        result = finetune_once(encoder, bright_dark, task, task.train_rows, seed=seed, settings=settings,
                               spec=AugmentSpec(output_size=32), device="cpu")
        assert result["epochs"] == 3 and len(made) == 3  # train, validate, test: built once each
        train = made[0]
        assert train.shuffle and sorted(train.rows) == sorted(task.train_rows)
        assert list(train.seen) == [0, 1, 2] and all(sorted(v) == sorted(task.train_rows) for v in train.seen.values())
        sampler = StudySampler(sorted(task.train_rows), 8, seed=seed, drop_last=False)
        assert all(train.seen[e] == sampler.share(e) for e in range(3))
        assert train.seen[0] != train.seen[1] != train.seen[2]
        assert list(made[1].seen) == [0] and made[1].seen[0] == task.val_rows * 3  # validation: epoch 0, 3 times
        runs.append(train.seen)
    assert runs[0] == runs[1] and runs[0][0] != runs[2][0]
