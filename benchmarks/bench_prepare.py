"""Preparation: resizing full-size radiograph JPEGs to 256 px, and SynthCXR generation.

    pytest benchmarks/bench_prepare.py --benchmark-only

- resize: a few ~2500 x 3000 grayscale JPEGs (generated in a temporary folder, like a MIMIC-CXR
  image) resized to 256 on the long side, one thread: DCT-scaled decode (libjpeg decodes at 1/8
  through PIL's draft mode, then Lanczos) against a plain full decode + Lanczos resize, in the
  same run; `speedup` = full-decode median / DCT median. A third case runs the parallel
  `resize_all` (all cores, files written) for images/s.
- synthcxr: studies/s on one core at 256 px (image + report, JPEG encoded in memory); the
  target is >= 200 studies/s per core.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from convirt_fast.data.resize import ResizeTask, decode_resized, resize_all, target_size

N_IMAGES = int(os.environ.get("CONVIRT_BENCH_RESIZE_IMAGES", "4"))
FULL_SIZE = (2500, 3000)  # width, height: about a MIMIC-CXR-JPG image
SYNTH_STUDIES = int(os.environ.get("CONVIRT_BENCH_SYNTH_STUDIES", "200"))


def _radiograph_like(seed: int) -> Image.Image:
    """Smooth structure plus film grain: JPEG-compresses like a radiograph (about 1 MB)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((24, 20)) * 200 + 30).astype(np.uint8))
    img = np.asarray(coarse.resize(FULL_SIZE, Image.Resampling.BICUBIC), np.int16)
    grain = rng.integers(-6, 7, size=(FULL_SIZE[1], FULL_SIZE[0]), dtype=np.int16)
    return Image.fromarray(np.clip(img + grain, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def big_jpegs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big_jpegs")
    paths = []
    for i in range(N_IMAGES):
        p = folder / f"img{i}.jpg"
        _radiograph_like(i).save(p, quality=90)  # about 1.4 MB, like a MIMIC-CXR-JPG file
        paths.append(p)
    return paths


def _full_decode_resize(path):
    with Image.open(path) as img:
        img = img.convert("L")
        return img.resize(target_size(*img.size), Image.Resampling.LANCZOS)


_medians: dict[str, float] = {}


@pytest.mark.parametrize("provider", ["full_decode", "dct_draft"])  # baseline first
def test_resize_full_size_jpeg(benchmark, big_jpegs, provider):
    fn = _full_decode_resize if provider == "full_decode" else decode_resized
    out = benchmark.pedantic(lambda: [fn(p) for p in big_jpegs], rounds=3, warmup_rounds=1)
    assert all(max(im.size) == 256 for im in out)
    median = benchmark.stats.stats.median
    _medians[provider] = median
    benchmark.extra_info.update(
        group=f"resize {FULL_SIZE[0]}x{FULL_SIZE[1]} JPEG -> 256",
        provider=provider,
        baselines=["full_decode"],
        images_per_s=round(len(big_jpegs) / median, 1),
        ms_per_image=round(median / len(big_jpegs) * 1e3, 2),
        file_kib=round(sum(p.stat().st_size for p in big_jpegs) / len(big_jpegs) / 1024),
    )
    if provider == "dct_draft" and "full_decode" in _medians:
        benchmark.extra_info["ratio_full_over_dct"] = round(_medians["full_decode"] / median, 2)


def test_resize_all_parallel(benchmark, big_jpegs, tmp_path):
    tasks = [ResizeTask(p, tmp_path / f"{i}" / p.name) for i, p in enumerate(big_jpegs)]

    def run():
        for t in tasks:
            t.dst.unlink(missing_ok=True)
        return resize_all(tasks, progress=False)

    results = benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    assert all(r.ok and not r.skipped for r in results)
    benchmark.extra_info.update(
        group="resize_all (threads, files written)",
        provider=f"{os.cpu_count()} threads",
        images_per_s=round(len(tasks) / benchmark.stats.stats.median, 1),
    )


def test_synthcxr_rate_one_core(benchmark):
    from convirt_fast.data.synthcxr.dataset import SynthConfig, plan_studies, synthesize

    cfg = SynthConfig(n=max(SYNTH_STUDIES, 100), seed=0, size=256)
    plans = [p for p in plan_studies(cfg) if p.split == "train"][:SYNTH_STUDIES]
    synthesize(plans[0], cfg)  # builds the texture banks once, as every worker does

    cpu = []

    def run():
        t = time.process_time()
        for p in plans:
            pixels, _ = synthesize(p, cfg)
            Image.fromarray(pixels).save(io.BytesIO(), format="JPEG", quality=95)
        cpu.append(time.process_time() - t)

    benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    rate = len(plans) / benchmark.stats.stats.median
    # Per CPU-second as well: on a shared machine the wall-clock rate also measures the others.
    benchmark.extra_info.update(
        group="synthcxr 256 px, one core",
        provider="generate+encode",
        studies_per_s=round(rate, 1),
        studies_per_cpu_s=round(len(plans) / float(np.median(cpu)), 1),
        load_average_1min=round(os.getloadavg()[0], 2),
        target=200,
    )
