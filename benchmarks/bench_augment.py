"""Image pipeline throughput: our backends against the paper's pipeline in torchvision.

    pytest benchmarks/bench_augment.py --benchmark-only

Every provider decodes the same 256-px JPEGs and applies the paper's t_v, one epoch of
CONVIRT_BENCH_IMAGES images (default 512) per round, with 2 DataLoader workers:
- torchvision: per-sample transforms (RandomResizedCrop, flip, RandomAffine, ColorJitter,
  GaussianBlur) in DataLoader workers, the way the paper's recipe is usually written;
- torch: our loader, batched augmentation on the device (CPU here; CUDA in gpu_check.sh);
- dali: our loader with the DALI pipeline (CPU operators without a GPU).
Images are the real covid-cxr radiographs (../shared/data) when present, else SynthCXR.
Each case records images/s and its ratio to torchvision measured in the same run.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from _paper_recipe import PaperImages

from convirt_fast.data.augment import AugmentSpec
from convirt_fast.data.augment_dali import dali_available
from convirt_fast.data.loader import ConVIRTLoader
from convirt_fast.data.manifest import load_manifest

NUM_IMAGES = int(os.environ.get("CONVIRT_BENCH_IMAGES", "512"))
BATCH = 32
WORKERS = 2
COVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "covid-cxr"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

_rates: dict[str, float] = {}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_images")
    common = ["--out", str(out), "--no-progress"]
    if (COVID / "pairs.csv").exists():
        args = ["csv", "--csv", str(COVID / "pairs.csv"), "--image-col", "image", "--text-col", "notes",
                "--patient-col", "patient_id", "--validate-fraction", "0", "--test-fraction", "0"]
    else:
        args = ["synthetic", "--n", "300"]
    subprocess.run([sys.executable, "-m", "convirt_fast.prepare", *args, *common], check=True, capture_output=True)
    return load_manifest(out)


def _epoch_torchvision(paths, spec):
    loader = DataLoader(PaperImages(paths, spec, NUM_IMAGES), batch_size=BATCH, num_workers=WORKERS, drop_last=True)
    count = 0
    for images in loader:
        images = images.to(DEVICE)
        count += images.shape[0]
    return count


def _epoch_ours(manifest, backend, spec):
    count = 0
    while count < NUM_IMAGES:  # whole epochs until NUM_IMAGES
        loader = ConVIRTLoader(manifest, None, batch_size=BATCH, augment=spec, backend=backend, device=DEVICE,
                               num_workers=WORKERS, seed=count)
        for batch in loader:
            count += batch["images"].shape[0]
            if count >= NUM_IMAGES:
                break
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return count


@pytest.mark.parametrize("provider", ["torchvision", "torch", "dali"])
def test_augment_throughput(benchmark, manifest, provider):
    if provider == "dali" and not dali_available():
        pytest.skip("DALI not installed")
    spec = AugmentSpec()
    paths = [manifest.image_paths(i)[0] for i in range(len(manifest))]
    if provider == "torchvision":
        count = benchmark.pedantic(_epoch_torchvision, args=(paths, spec), rounds=3, iterations=1)
    else:
        count = benchmark.pedantic(_epoch_ours, args=(manifest, provider, spec), rounds=3, iterations=1)
    rate = count / benchmark.stats.stats.median
    _rates[provider] = rate
    benchmark.extra_info.update(group="augment", provider=provider, baselines=["torchvision"],
                                images=count, images_per_s=round(rate, 1), device=DEVICE, workers=WORKERS,
                                source="covid-cxr" if (COVID / "pairs.csv").exists() else "synthcxr")
    if provider != "torchvision" and "torchvision" in _rates:
        benchmark.extra_info["speedup_vs_torchvision"] = round(rate / _rates["torchvision"], 2)
