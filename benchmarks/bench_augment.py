"""Image pipeline throughput: our backends against the paper's pipeline in torchvision.

    pytest benchmarks/bench_augment.py --benchmark-only

Every provider decodes the same 256-px JPEGs and applies the paper's t_v in as many DataLoader
workers as cores (capped at 16); each is built and warmed up (workers started, one batch) before
CONVIRT_BENCH_ROUNDS rounds (default 3) of CONVIRT_BENCH_IMAGES images each (default 512 on a
CPU, 4096 on a GPU), batches of 32 (CPU) or 256 (GPU), the device synchronised at each round's end:
- torchvision: the plain recipe's per-sample transforms (RandomResizedCrop, flip, RandomAffine,
  ColorJitter, GaussianBlur; PIL) in DataLoader workers, batches copied to the device
  (benchmarks/_plain_recipe.py);
- torch: our loader, JPEGs decoded by PIL in the workers, batched augmentation on the device;
- torch_gpu_decode: our loader with data.decode=gpu: workers read the bytes, the batch is decoded
  on the GPU by torchvision's batched nvJPEG, then augmented there (CUDA only);
- dali: our loader with the DALI pipeline (CPU operators without a GPU; when installed).
Images are the real covid-cxr radiographs (../shared/data) when present, else SynthCXR.
Each case records images/s (median over rounds, with min/max) and its ratio to torchvision
measured in the same run; our loader's cases also record its decode fallbacks (batches the
device decoder failed, by cause, and the files sent back to the workers): a torch_gpu_decode
figure with fallbacks is not all nvJPEG.
"""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _plain_recipe import PlainImages, plain_loader, plain_workers
from convirt_fast.data.augment import AugmentSpec
from convirt_fast.data.augment_dali import dali_available
from convirt_fast.data.loader import ConVIRTLoader
from convirt_fast.data.manifest import load_manifest

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
NUM_IMAGES = int(os.environ.get("CONVIRT_BENCH_IMAGES", "4096" if CUDA else "512"))  # per round
ROUNDS = int(os.environ.get("CONVIRT_BENCH_ROUNDS", "3"))
BATCH = 256 if CUDA else 32
WORKERS = plain_workers()
COVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "covid-cxr"
PROVIDERS = ["torchvision", "torch", "torch_gpu_decode", "dali"]  # baseline first

_rates: dict[str, float] = {}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_images")
    common = ["--out", str(out), "--no-progress"]
    if (COVID / "pairs.csv").exists():
        args = ["csv", "--csv", str(COVID / "pairs.csv"), "--image-col", "image", "--text-col", "notes",
                "--patient-col", "patient_id", "--validate-fraction", "0", "--test-fraction", "0"]
    else:
        args = ["synthetic", "--n", "1200" if CUDA else "300"]
    subprocess.run([sys.executable, "-m", "convirt_fast.prepare", *args, *common], check=True, capture_output=True)
    return load_manifest(out)


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _torchvision_batches(manifest, spec):
    paths = [manifest.image_paths(r)[0] for r in manifest.split_indices("train")]
    loader = plain_loader(PlainImages(paths, spec), BATCH, (1 + ROUNDS * -(-NUM_IMAGES // BATCH)) * BATCH, DEVICE)
    for images in loader:
        yield images.to(DEVICE, non_blocking=True)


def _our_loader(manifest, spec, provider):
    backend = "dali" if provider == "dali" else "torch"
    decode = {"torch": "cpu", "torch_gpu_decode": "gpu"}.get(provider, "auto")
    return ConVIRTLoader(manifest, None, rows=manifest.split_indices("train"), batch_size=BATCH, augment=spec,
                         backend=backend, decode=decode, device=DEVICE, num_workers=WORKERS)


def _our_batches(loader):
    try:
        while True:  # epochs roll over without draining the workers
            for batch in loader:
                yield batch["images"]
    finally:
        loader.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_augment_throughput(benchmark, manifest, provider):
    if provider == "dali" and not dali_available():
        pytest.skip("DALI not installed")
    if provider == "torch_gpu_decode" and not CUDA:
        pytest.skip("GPU decode needs CUDA")
    spec = AugmentSpec()
    loader = None
    if provider == "torchvision":
        batches = _torchvision_batches(manifest, spec)
    else:
        loader = _our_loader(manifest, spec, provider)
        batches = _our_batches(loader)
    next(batches)  # workers started, first batch through
    counts, rates = [], []

    def one_round():
        start, count = time.perf_counter(), 0
        while count < NUM_IMAGES:
            count += next(batches).shape[0]
        _sync()
        counts.append(count)
        rates.append(count / (time.perf_counter() - start))

    try:
        benchmark.pedantic(one_round, setup=_sync, rounds=ROUNDS, iterations=1)
    finally:
        batches.close()
    rate = statistics.median(rates)
    _rates[provider] = rate
    benchmark.extra_info.update(group="augment", provider=provider, baselines=["torchvision"], images=counts[0],
                                images_per_s=round(rate, 1), images_per_s_min=round(min(rates), 1),
                                images_per_s_max=round(max(rates), 1), batch_size=BATCH, device=str(DEVICE),
                                workers=WORKERS, source="covid-cxr" if (COVID / "pairs.csv").exists() else "synthcxr")
    if loader is not None:
        benchmark.extra_info.update(decode=loader.decode, decode_fallbacks=sum(loader.decode_fallbacks.values()),
                                    decode_fallback_causes=dict(loader.decode_fallbacks),
                                    gpu_rejected_files=len(loader.gpu_rejected))
    if provider != "torchvision" and "torchvision" in _rates:
        benchmark.extra_info["speedup_vs_torchvision"] = round(rate / _rates["torchvision"], 2)
