"""Training-step throughput: pairs/s of loader -> model -> loss -> optimizer, end to end.

    pytest benchmarks/bench_train.py --benchmark-only            # CPU case; GPU cases on CUDA
    pytest benchmarks/bench_train.py --benchmark-only -k 256     # the batch-256 pair (scripts/gpu_check.sh)

- convirt_fast: the real `Trainer` (convirt_fast/trainer.py) built from a `Config` on the prepared
  data, timed on `trainer.train_step([batch])` over the trainer's own loader (our loader: batched
  augmentation on the device, JPEGs decoded there with nvJPEG on a GPU; the fused loss; bf16
  autocast and fused AdamW on a GPU). Setup (tokenizer training, model) is not timed.
- plain_recipe: the competent plain recipe (benchmarks/_plain_recipe.py): torchvision per-sample
  transforms in as many DataLoader workers as cores, HF tokenizer per batch, open_clip's loss,
  bf16 autocast, fused AdamW, channels_last, cudnn.benchmark.
Same models (`build_model` from the same ModelConfig), same data (SynthCXR), same process.

Each provider: model and loader built, CONVIRT_BENCH_WARMUP steps untimed, then
CONVIRT_BENCH_ROUNDS rounds (default 3 on a GPU, 5 on a CPU) of CONVIRT_BENCH_STEPS steps, the device synchronised
before and after each round; data loading is inside the timing, and so is what Trainer.fit does
around the step (the step count, a host read of the losses every train.log_every steps; the plain
recipe reads its loss as often). extra_info: pairs_per_s (median
over rounds), its min/max and every round, pairs_per_s_vs_plain_recipe (median / median, same
run). Cases: CPU: ResNet-18 + a 4-layer BERT at 128 px, batch 32. GPU: ResNet-50 + BERT-base
(6 layers frozen) at 224 px, batch 256 and 32 (`-k 256` selects the batch-256 pair only).
"""

import gc
import os
import statistics
import subprocess
import sys
import time

import pytest
import torch

from _plain_recipe import PlainRecipe, plain_workers
from convirt_fast.config import Config, DataConfig, ModelConfig, TrainConfig
from convirt_fast.data.augment import AugmentSpec
from convirt_fast.data.manifest import load_manifest

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
ROUNDS = int(os.environ.get("CONVIRT_BENCH_ROUNDS", "3" if CUDA else "5"))  # 2 shared cores: bursts
STEPS = int(os.environ.get("CONVIRT_BENCH_STEPS", "12" if CUDA else "2"))  # per round
WARMUP = int(os.environ.get("CONVIRT_BENCH_WARMUP", "4" if CUDA else "2"))
WORKERS = plain_workers()  # both providers: as many workers as cores (capped)
# Studies: enough for several batch-256 steps per epoch on a GPU; a quick prepare on a CPU.
SYNTH_N = int(os.environ.get("CONVIRT_BENCH_SYNTH_N", "3000" if CUDA else "600"))

_rates: dict[tuple, float] = {}

if CUDA:
    SIZES = [("resnet50+bert-base", 256), ("resnet50+bert-base", 32)]
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
    subprocess.run([sys.executable, "-m", "convirt_fast.prepare", "synthetic", "--n", str(SYNTH_N), "--out", str(out),
                    "--no-progress"], check=True, capture_output=True)
    return out


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _measure(benchmark, step, batch_size: int) -> list[float]:
    """WARMUP untimed steps, then ROUNDS rounds of STEPS steps; pairs/s of each round."""
    for _ in range(WARMUP):
        step()
    rates = []

    def one_round():
        start = time.perf_counter()
        for _ in range(STEPS):
            step()
        _sync()
        rates.append(STEPS * batch_size / (time.perf_counter() - start))

    benchmark.pedantic(one_round, setup=_sync, rounds=ROUNDS, iterations=1)
    return rates


def _plain_recipe(benchmark, root, mcfg, size, batch_size):
    from convirt_fast.models import build_model
    from convirt_fast.text import SentenceIndex
    from convirt_fast.text.tokenizer import train_wordpiece

    manifest = load_manifest(root)
    index = SentenceIndex.load(manifest.sentence_index_path)
    rows = [r for r in manifest.split_indices("train") if index.sentences(r) and manifest.studies[r].images]
    sentences = [index.sentences(r) for r in rows]
    tokenizer = train_wordpiece((s for ss in sentences for s in ss), vocab_size=mcfg.vocab_size)
    torch.manual_seed(0)
    model, _ = build_model(mcfg, tokenizer=tokenizer)
    model.to(DEVICE).train()
    recipe = PlainRecipe(model, tokenizer, [manifest.image_paths(r)[0] for r in rows], sentences,
                         AugmentSpec(output_size=size), batch_size, WARMUP + ROUNDS * STEPS, DEVICE, workers=WORKERS,
                         log_every=TrainConfig.log_every)
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = CUDA  # as open_clip's training main does
    try:
        return _measure(benchmark, recipe.step, batch_size)
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        recipe.close()


def _convirt_fast(benchmark, root, run_dir, mcfg, size, batch_size):
    from convirt_fast.trainer import Trainer

    cfg = Config(model=mcfg,
                 data=DataConfig(path=str(root), batch_size=batch_size, num_workers=WORKERS,
                                 augment=AugmentSpec(output_size=size)),
                 train=TrainConfig(max_steps=10**9, val_every=10**9, checkpoint_every=10**9, out_dir=str(run_dir),
                                   run_name="bench", resume=None, evaluate=False, progress=False),
                 preset="bench")
    trainer = Trainer(cfg)
    batches = trainer.batches()  # the trainer's own loader
    window_start = [time.perf_counter()]

    def step():  # as Trainer.fit: the step, the step count, a host read every log_every steps
        trainer.train_step([next(batches)])
        trainer.progress.step += 1
        if trainer.step % cfg.train.log_every == 0:
            trainer.flush(window_start[0])  # times the window itself, up to the end of its host read
            window_start[0] = time.perf_counter()

    try:
        return _measure(benchmark, step, batch_size)
    finally:
        batches.close()
        trainer.loader.close()  # its workers must not compete with the next case for the cores


@pytest.mark.parametrize("provider", ["plain_recipe", "convirt_fast"])  # baseline first
@pytest.mark.parametrize("models, batch_size", SIZES)
def test_train_step(benchmark, data, tmp_path, provider, models, batch_size):
    mcfg, size = model_config(models)
    try:
        if provider == "plain_recipe":
            rates = _plain_recipe(benchmark, data, mcfg, size, batch_size)
        else:
            rates = _convirt_fast(benchmark, data, tmp_path, mcfg, size, batch_size)
    finally:
        gc.collect()
        if CUDA:
            torch.cuda.empty_cache()
    median = statistics.median(rates)
    key = (models, batch_size)
    if provider == "plain_recipe":
        _rates[key] = median
    benchmark.extra_info.update(
        group=f"{models} batch {batch_size}", provider=provider, baselines=["plain_recipe"],
        pairs_per_s=round(median, 1), pairs_per_s_min=round(min(rates), 1), pairs_per_s_max=round(max(rates), 1),
        pairs_per_s_rounds=[round(r, 1) for r in rates], batch_size=batch_size, image_size=size, steps=STEPS,
        rounds=ROUNDS, warmup=WARMUP, workers=WORKERS, device=torch.cuda.get_device_name() if CUDA else "cpu")
    if provider != "plain_recipe" and key in _rates:
        benchmark.extra_info["pairs_per_s_vs_plain_recipe"] = round(median / _rates[key], 2)
