"""`prepare chexpert-8x200`: the paper's zero-shot retrieval set, built from CheXpert by its rule.

8 categories (Atelectasis, Cardiomegaly, Edema, Fracture, Pleural Effusion, Pneumonia,
Pneumothorax, No Finding); per category 200 candidate images and 10 query images, all
exclusively positive: 1.0 for the category and, for each of the 7 others, 0.0 or blank (never
1.0, never uncertain). Frontal images of CheXpert's train.csv (the layout in chexpert.py).
Within a category the eligible images are taken in the order of a seeded hash of their path,
at most one image per patient, candidates first, then queries from patients that are not
among any category's candidates; the same seed gives the same set.

Text queries: a CSV (`category`, `text`) you pass with `--text-queries` (the paper's 5
radiologist-written sentences per category are not public), else the built-in 5 per category
(SynthCXR's held-out queries, convirt_fast/data/synthcxr/reports.py).

Written as a prepared folder for `evaluate --task retrieval`: manifest.csv (split
"retrieval", the 8 labels one-hot), retrieval_images.csv and text_queries.csv.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from convirt_fast.data import rejects as R
from convirt_fast.io import atomic_write
from convirt_fast.prepare.chexpert import read_chexpert
from convirt_fast.prepare.common import PrepareError, PrepareSummary
from convirt_fast.prepare.downstream import params_of, resize_items, seeded_order, write_prepared

CATEGORIES = ("Atelectasis", "Cardiomegaly", "Edema", "Fracture", "Pleural Effusion", "Pneumonia", "Pneumothorax",
              "No Finding")
RETRIEVAL_IMAGES_CSV = "retrieval_images.csv"
TEXT_QUERIES_CSV = "text_queries.csv"


@dataclass(frozen=True)
class Chexpert8x200Config:
    root: Path
    candidates: int = 200
    queries: int = 10
    text_queries: Path | None = None
    seed: int = 0


def exclusive_category(observed: dict[str, int | None]) -> str | None:
    """The one category an image is exclusively positive for, or None."""
    positive = [c for c in CATEGORIES if observed[c] == 1]
    if len(positive) != 1:
        return None
    if any(observed[c] == -1 for c in CATEGORIES):
        return None
    return positive[0]


def _text_queries(path: Path | None) -> list[tuple[str, str]]:
    if path is None:
        from convirt_fast.data.synthcxr.reports import TEXT_QUERIES

        return [(c, t) for c in CATEGORIES for t in TEXT_QUERIES[c]]
    if not Path(path).is_file():
        raise PrepareError(f"{path}: text queries CSV not found")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"category", "text"} - set(reader.fieldnames or ())
        if missing:
            raise PrepareError(f"{path}: missing columns: {', '.join(sorted(missing))} (expected category, text)")
        rows = [(r["category"].strip(), r["text"].strip()) for r in reader]
    unknown = sorted({c for c, _ in rows} - set(CATEGORIES))
    if unknown:
        raise PrepareError(f"{path}: categories {unknown} are not among {', '.join(CATEGORIES)}")
    return rows


def prepare_chexpert_8x200(out: Path, cfg: Chexpert8x200Config, *, workers: int = 0,
                           progress: bool = True) -> PrepareSummary:
    root = Path(cfg.root)
    if not root.is_dir():
        raise PrepareError(f"{root}: CheXpert root folder not found")
    texts = _text_queries(cfg.text_queries)
    rejects = R.RejectLog()  # rows CheXpert itself cannot give (bad values, missing images); not the rule's
    pools: dict[str, list] = {c: [] for c in CATEGORIES}
    for item, observed in read_chexpert(root, "train.csv", "retrieval", R.RejectLog(), views="frontal"):
        category = exclusive_category(observed)
        if category is not None:
            item.labels = {c: int(c == category) for c in CATEGORIES}
            pools[category].append(item)
    by_path = {c: {it.study_id: it for it in pool} for c, pool in pools.items()}
    chosen: dict[str, list] = {}
    taken_patients: set[str] = set()
    for c in CATEGORIES:  # candidates, one image per patient
        chosen[c] = _pick(by_path[c], cfg.candidates, cfg.seed, taken_patients)
    queries = {c: _pick(by_path[c], cfg.queries, cfg.seed + 1, taken_patients) for c in CATEGORIES}
    short = {c: (len(chosen[c]), len(queries[c])) for c in CATEGORIES
             if len(chosen[c]) < cfg.candidates or len(queries[c]) < cfg.queries}
    if short:
        raise PrepareError(f"{root / 'train.csv'}: too few exclusively positive frontal images (one per patient) for "
                           f"{cfg.candidates} candidates + {cfg.queries} queries in: "
                           + "; ".join(f"{c} ({a} + {b})" for c, (a, b) in short.items()))
    items = [it for c in CATEGORIES for it in chosen[c] + queries[c]]
    role = {it.study_id: "candidate" for c in CATEGORIES for it in chosen[c]}
    role.update({it.study_id: "query" for c in CATEGORIES for it in queries[c]})
    resized = resize_items(out, root, items, rejects, workers=workers, progress=progress)
    summary = write_prepared(
        out, root, resized, label_columns=CATEGORIES, rejects=rejects, source=f"chexpert-8x200:{root.name}",
        params=params_of(cfg),
        extra_meta={"retrieval_images": RETRIEVAL_IMAGES_CSV, "text_queries": TEXT_QUERIES_CSV,
                    "benchmark": {"task": "chexpert-8x200", "rule": "exclusively positive (1.0 for the category, "
                                  "0.0 or blank for the 7 others), frontal, one image per patient, queries from "
                                  "patients outside all candidates", "candidates": cfg.candidates,
                                  "queries": cfg.queries,
                                  "text_queries": str(cfg.text_queries) if cfg.text_queries else "built-in"}})
    from convirt_fast.data.manifest import load_manifest

    manifest = load_manifest(out)
    with atomic_write(Path(out) / RETRIEVAL_IMAGES_CSV, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "image", "category", "role"])
        for s in manifest.studies:
            category = next(c for c in CATEGORIES if s.labels[c] == 1)
            w.writerow([s.study_id, s.images[0], category, role[s.study_id]])
    with atomic_write(Path(out) / TEXT_QUERIES_CSV, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["category", "text"])
        w.writerows(texts)
    return summary


def _pick(pool: dict, n: int, seed: int, taken_patients: set[str]) -> list:
    out = []
    for key in seeded_order(pool, seed):
        it = pool[key]
        if it.patient in taken_patients:
            continue
        out.append(it)
        taken_patients.add(it.patient)
        if len(out) == n:
            break
    return out
