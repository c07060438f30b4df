"""`prepare synthetic`: SynthCXR (rendered by convirt_fast.data.synthcxr) written into a prepared
folder; `ensure_synthcxr(cache_dir, n=..., seed=...)`, which the trainer and the evaluation call
through `prepare.source.data_path`, prepares it once (into a folder keyed by generator version,
n, seed and size) and returns the manifest path; later calls, and other ranks waiting on the
lock, return at once.

Besides the usual files (see convirt_fast.data.manifest) the folder holds the retrieval set:

    retrieval_images.csv   study_id, image, category, role
                           image: path relative to the folder; category: one of the 8 label
                           names (Atelectasis, Cardiomegaly, Edema, Fracture, Pleural Effusion,
                           Pneumonia, Pneumothorax, No Finding); role: candidate | query.
                           Every image is exclusively positive for its category.
    text_queries.csv       category, text: held-out queries, 5 per category, never written in
                           any report of the data set.

The retrieval studies are also in manifest.csv, with split "retrieval" (never train on them).
"""

from __future__ import annotations

import csv
import fcntl
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from convirt_fast.data import rejects as R
from convirt_fast.io import atomic_write
from convirt_fast.data.manifest import Study
from convirt_fast.data.resize import JPEG_QUALITY, is_valid_output
from convirt_fast.data.synthcxr import findings as F
from convirt_fast.data.synthcxr.dataset import (
    GENERATOR_VERSION,
    StudyPlan,
    SynthConfig,
    labels_of,
    plan_studies,
    synthesize,
)
from convirt_fast.data.synthcxr.reports import TEXT_QUERIES
from convirt_fast.prepare.common import PrepareSummary, finalize

RETRIEVAL_IMAGES_CSV = "retrieval_images.csv"
TEXT_QUERIES_CSV = "text_queries.csv"
CHUNK = 64


def generate_one(plan: StudyPlan, cfg: SynthConfig, out: Path) -> tuple[str, bool]:
    """Writes the study's image unless a valid one is there; returns (report, written)."""
    dst = out / plan.image
    present = dst.exists() and is_valid_output(dst, cfg.size)
    pixels, report = synthesize(plan, cfg, image=not present)
    if pixels is not None:
        with atomic_write(dst, "wb", fsync=False) as f:
            Image.fromarray(pixels).save(f, format="JPEG", quality=JPEG_QUALITY)
    return report, not present


def _generate_chunk(args: tuple[list[StudyPlan], SynthConfig, Path]) -> list[tuple[str, bool]]:
    plans, cfg, out = args
    return [generate_one(p, cfg, out) for p in plans]


def prepare_synthetic(out: Path, cfg: SynthConfig, *, workers: int = 0, progress: bool = True) -> PrepareSummary:
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_studies(cfg)
    chunks = [plans[i : i + CHUNK] for i in range(0, len(plans), CHUNK)]
    workers = workers or os.cpu_count() or 1
    results: list[tuple[str, bool]] = []
    t0 = time.perf_counter()
    with tqdm(total=len(plans), desc="synthcxr", unit="study", disable=not progress) as bar:
        if workers == 1:
            for ch in chunks:
                results += _generate_chunk((ch, cfg, out))
                bar.update(len(ch))
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context()) as pool:
                for res in pool.map(_generate_chunk, [(ch, cfg, out) for ch in chunks]):
                    results += res
                    bar.update(len(res))
    seconds = time.perf_counter() - t0
    studies = [
        Study(p.study_id, p.patient_id, p.split, (p.image,), report, labels_of(p.findings))
        for p, (report, _) in zip(plans, results)
    ]
    _write_retrieval_files(out, plans)
    written = sum(w for _, w in results)
    summary = finalize(
        out,
        studies,
        image_keys=[s.images for s in studies],
        report_files=[p.image for p in plans],
        label_columns=F.CATEGORIES,
        rejects=R.RejectLog(),
        source="synthcxr",
        params={**asdict(cfg), "generator_version": GENERATOR_VERSION},
        images_written=written,
        images_skipped=len(plans) - written,
        extra_meta={"retrieval_images": RETRIEVAL_IMAGES_CSV, "text_queries": TEXT_QUERIES_CSV},
    )
    summary.extra["generate_seconds"] = seconds
    summary.extra["studies_per_second"] = len(plans) / seconds if seconds > 0 else float("inf")
    return summary


def _mp_context():
    """fork is fastest, but forking a process whose torch (OpenMP) threads are running can
    deadlock the children: a trainer that calls ensure_synthcxr gets spawned workers."""
    return multiprocessing.get_context("spawn" if "torch" in sys.modules else "fork")


def _write_retrieval_files(out: Path, plans: list[StudyPlan]) -> None:
    with atomic_write(out / RETRIEVAL_IMAGES_CSV, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "image", "category", "role"])
        for p in plans:
            if p.split == "retrieval":
                w.writerow([p.study_id, p.image, p.category, p.role])
    with atomic_write(out / TEXT_QUERIES_CSV, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["category", "text"])
        for cat in F.CATEGORIES:
            for text in TEXT_QUERIES[cat]:
                w.writerow([cat, text])


def default_cache_dir() -> Path:
    """$CONVIRT_CACHE, else $XDG_CACHE_HOME/convirt_fast, else ~/.cache/convirt_fast."""
    if env := os.environ.get("CONVIRT_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "convirt_fast"


def synthcxr_dir(cache_dir: Path, cfg: SynthConfig) -> Path:
    return Path(cache_dir) / f"synthcxr-v{GENERATOR_VERSION}-n{cfg.n}-seed{cfg.seed}-{cfg.size}px"


def ensure_synthcxr(
    cache_dir: Path | None = None,
    *,
    n: int = 4000,
    seed: int = 0,
    size: int = 256,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """The manifest.csv of SynthCXR(n, seed, size) under `cache_dir`, prepared on first use.

    Safe to call from every rank at once: one prepares under an exclusive file lock, the others
    wait on it and then find the finished folder. An interrupted preparation is completed (only
    missing images are generated).
    """
    from convirt_fast.data.manifest import MANIFEST_CSV, ManifestError, load_manifest

    cfg = SynthConfig(n=n, seed=seed, size=size)
    folder = synthcxr_dir(cache_dir or default_cache_dir(), cfg)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_path = folder.parent / f".{folder.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (folder / "manifest.json").is_file():
                try:
                    load_manifest(folder)  # checks columns and the content hash
                    return folder / MANIFEST_CSV
                except ManifestError:
                    pass  # damaged: prepare again (valid images are kept)
            prepare_synthetic(folder, cfg, workers=workers, progress=progress)
            return folder / MANIFEST_CSV
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
