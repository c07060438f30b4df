"""Training-step throughput: pairs/s of loader -> model -> loss -> optimizer.

    pytest benchmarks/bench_train.py --benchmark-only

- convirt_fast: our loader (batched augmentation: torch backend, or DALI on a GPU when
  installed), bf16 autocast on a GPU, the fused loss, fused AdamW;
- paper_recipe: the same models in fp32 fed by torchvision per-sample transforms in DataLoader
  workers, the reference loss (N x N matrices), plain Adam.
Same models, same data (SynthCXR), same run. CPU: ResNet-18 + a 4-layer BERT at 128 px, batch
32. GPU (scripts/gpu_check.sh): ResNet-50 + BERT-base (6 layers frozen) at 224 px, batch 32
and 256. Each case records pairs/s and its ratio to paper_recipe (benchmarks/conftest.py).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from _paper_recipe import PaperImages
from convirt_fast.config import ModelConfig
from convirt_fast.data.augment import AugmentSpec
from convirt_fast.data.loader import ConVIRTLoader
from convirt_fast.data.manifest import load_manifest
from convirt_fast.kernels.reference import convirt_loss_reference
from convirt_fast.loss import ConVIRTLoss
from convirt_fast.models import build_model
from convirt_fast.text import SentenceIndex
from convirt_fast.text.tokenizer import train_wordpiece

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
STEPS = int(os.environ.get("CONVIRT_BENCH_STEPS", "20" if CUDA else "6"))
WARMUP = 3 if CUDA else 1
WORKERS = min(8, os.cpu_count() or 2) if CUDA else 2

_rates: dict[tuple, dict[str, float]] = {}

if CUDA:
    SIZES = [("resnet50+bert-base", 32), ("resnet50+bert-base", 256)]
else:
    SIZES = [("resnet18+bert-4", 32)]


def model_config(name: str) -> tuple[ModelConfig, int]:
    if name == "resnet50+bert-base":
        return ModelConfig(image_encoder="resnet50", text_layers=12, text_hidden=768, text_heads=12,
                           freeze_text_layers=6, vocab_size=8000), 224
    return ModelConfig(image_encoder="resnet18", text_layers=4, text_hidden=256, text_heads=4, freeze_text_layers=0,
                       vocab_size=2000, projection_dim=128, channels_last=False), 128


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_train")
    subprocess.run([sys.executable, "-m", "convirt_fast.prepare", "synthetic", "--n", "600", "--out", str(out),
                    "--no-progress"], check=True, capture_output=True)
    manifest = load_manifest(out)
    index = SentenceIndex.load(manifest.sentence_index_path)
    rows = [r for r in manifest.split_indices("train") if index.sentences(r)]
    tokenizer = train_wordpiece((s for r in rows for s in index.sentences(r)), vocab_size=8000)
    return manifest, index, rows, tokenizer


def _time_steps(batches, step) -> float:
    """pairs/s over STEPS steps after WARMUP steps (data loading included)."""
    pairs, start = 0, None
    for i, batch in enumerate(batches):
        if i == WARMUP:
            if CUDA:
                torch.cuda.synchronize()
            start, pairs = time.perf_counter(), 0
        pairs += step(batch)
        if i + 1 == WARMUP + STEPS:
            break
    if CUDA:
        torch.cuda.synchronize()
    return pairs / (time.perf_counter() - start)


def _ours(manifest, tokenizer, cfg, size, batch_size):
    model, _ = build_model(cfg, tokenizer=tokenizer)
    model.to(DEVICE).train()
    loss_fn = ConVIRTLoss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=CUDA)
    loader = ConVIRTLoader(manifest, tokenizer, batch_size=batch_size, augment=AugmentSpec(output_size=size),
                           device=DEVICE, num_workers=WORKERS, max_length=64)

    def step(batch):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=CUDA):
            out = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        loss = loss_fn(out["image"].float(), out["text"].float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return batch["images"].shape[0]

    def batches():
        while True:
            yield from loader

    return _time_steps(batches(), step)


def _paper_recipe(manifest, index, rows, tokenizer, cfg, size, batch_size):
    model, _ = build_model(cfg, tokenizer=tokenizer)
    model.to(DEVICE).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    paths = [manifest.image_paths(r)[0] for r in rows]
    sentences = [index.sentences(r) for r in rows]
    dataset = PaperImages(paths, AugmentSpec(output_size=size), (WARMUP + STEPS) * batch_size, sentences)

    def collate(items):
        images = torch.stack([im for im, _ in items])
        tokens = tokenizer([s for _, s in items], padding="longest", truncation=True, max_length=64, return_tensors="pt")
        return images, tokens

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=WORKERS, collate_fn=collate,
                        drop_last=True, pin_memory=CUDA)

    def step(batch):
        images, tokens = batch
        out = model(images.to(DEVICE), tokens["input_ids"].to(DEVICE), tokens["attention_mask"].to(DEVICE))
        loss = convirt_loss_reference(out["image"], out["text"], 0.1, 0.75)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return images.shape[0]

    return _time_steps(iter(loader), step)


@pytest.mark.parametrize("provider", ["paper_recipe", "convirt_fast"])  # baseline first
@pytest.mark.parametrize("models, batch_size", SIZES)
def test_train_step(benchmark, data, provider, models, batch_size):
    manifest, index, rows, tokenizer = data
    cfg, size = model_config(models)
    if provider == "paper_recipe":
        run = lambda: _paper_recipe(manifest, index, rows, tokenizer, cfg, size, batch_size)  # noqa: E731
    else:
        run = lambda: _ours(manifest, tokenizer, cfg, size, batch_size)  # noqa: E731
    # The benchmark's own time includes building the model and the warm-up steps: the figure
    # that counts is pairs/s over the timed steps, and its ratio to the baseline's.
    rate = benchmark.pedantic(run, rounds=1, iterations=1)
    key = (models, batch_size)
    _rates.setdefault(key, {})[provider] = rate
    benchmark.extra_info.update(group=f"{models} batch {batch_size}", provider=provider, pairs_per_s=round(rate, 1),
                                image_size=size, steps=STEPS, device=str(DEVICE))
    if provider != "paper_recipe" and "paper_recipe" in _rates[key]:
        benchmark.extra_info["pairs_per_s_vs_paper_recipe"] = round(rate / _rates[key]["paper_recipe"], 2)
