"""Shared test setup: the `gpu` marker skips without CUDA; paths to the shared real data."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


# Without CUDA the Triton kernels run under the interpreter. The variable is read when Triton is
# first imported, and any test module may import it (torch, transformers and convirt_fast do,
# indirectly), so it is set here, before the first test module is collected.
if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data beside the repository; tests using it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (it lives beside the repository)")
    return SHARED_DATA


def tiny_trained_run(root: Path, spec) -> Path:
    """A 4-step pretraining run on SynthCXR n=60 (checkpoints, tokenizer, exports) under `root`,
    its images transformed by `spec`; returns the run folder."""
    from convirt_fast.config import Config, DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
    from convirt_fast.post_train import post_train
    from convirt_fast.prepare.synthetic import ensure_synthcxr
    from convirt_fast.trainer import Trainer

    ensure_synthcxr(root / "cache", n=60, seed=0, size=64, workers=1, progress=False)
    cfg = Config(
        preset="test",
        model=ModelConfig(image_encoder="resnet18", text_layers=2, text_hidden=32, text_heads=2, vocab_size=300,
                          freeze_text_layers=1, projection_dim=16, channels_last=False),
        data=DataConfig(path="synthcxr", synth_n=60, synth_size=64, cache_dir=str(root / "cache"), batch_size=8,
                        num_workers=0, max_length=24, augment=spec, backend="torch"),
        loss=LossConfig(), optim=OptimConfig(lr=1e-3, schedule="plateau"),
        train=TrainConfig(max_steps=4, val_every=4, log_every=1, checkpoint_every=4, out_dir=str(root / "runs"),
                          run_name="run", progress=False, evaluate=False))
    trainer = Trainer(cfg)
    post_train(trainer.run_dir, trainer.fit())
    return root / "runs" / "run"
