"""`prepare mura`: MURA-v1.1 (Stanford ML Group, musculoskeletal radiographs).

Expected under the root (the MURA-v1.1 folder):
    train_image_paths.csv, valid_image_paths.csv       no header; one image path a line:
        MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png
    train_labeled_studies.csv, valid_labeled_studies.csv   no header; study folder, label:
        MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/,1   (1 abnormal, 0 normal)
    train/, valid/   the images (PNG, mostly 8-bit grayscale, some RGB)

One manifest row per study with all its images, label `Abnormal`. The official valid set is
the test set; 3,730 images of train (whole patients) are held out for validation (the paper:
33,078 / 3,730 / 3,197 images). manifest.json says `"evaluation": {"unit": "image",
"aggregate": "study_mean"}`: classifiers train on images (each labelled with its study) and the
AUC is over studies, a study's score being the mean of its images' probabilities (the paper).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from convirt_fast.data import rejects as R
from convirt_fast.prepare.common import PrepareError, PrepareSummary
from convirt_fast.prepare.downstream import (
    Item,
    drop_split_leaks,
    hold_out,
    params_of,
    read_table,
    release_relative,
    resize_items,
    write_prepared,
)

LABEL = "Abnormal"
PAPER_SPLIT = {"train": 33078, "validate": 3730, "test": 3197}
EVALUATION = {"unit": "image", "aggregate": "study_mean"}


@dataclass(frozen=True)
class MuraConfig:
    root: Path
    validate_size: int = PAPER_SPLIT["validate"]
    seed: int = 0


def _patient(study: str) -> str | None:
    return next((p for p in study.split("/") if p.startswith("patient")), None)


def _read_part(root: Path, part: str, split: str, rejects: R.RejectLog) -> list[Item]:
    studies_csv, images_csv = f"{part}_labeled_studies.csv", f"{part}_image_paths.csv"
    labels: dict[str, tuple[int, str]] = {}
    for line, row in read_table(root / studies_csv, fieldnames=("study", "label")):
        where = f"{studies_csv}:{line}"
        study = release_relative(root, row["study"] or "").rstrip("/")
        value = (row["label"] or "").strip()
        if not study or _patient(study) is None:
            rejects.add(where, where, R.BAD_VALUE, f"study path {row['study']!r} has no patientNNNNN folder")
        elif value not in ("0", "1"):
            rejects.add(study, where, R.BAD_VALUE, f"label {value!r} is not 0 or 1")
        elif study in labels:
            rejects.add(study, where, R.DUPLICATE_ROW, "study listed again")
        else:
            labels[study] = (int(value), where)
    images: dict[str, list[str]] = defaultdict(list)
    for line, row in read_table(root / images_csv, fieldnames=("image",)):
        where = f"{images_csv}:{line}"
        image = release_relative(root, row["image"] or "")
        study = str(Path(image).parent)
        if study not in labels:
            rejects.add(image, where, R.NO_SPLIT, f"its study is not (usably) listed in {studies_csv}")
        elif image in images[study]:
            rejects.add(image, where, R.DUPLICATE_ROW, "image listed again")
        else:
            images[study].append(image)
    items = []
    for study, (label, where) in labels.items():
        if not images[study]:
            rejects.add(study, where, R.NO_IMAGE_LEFT, f"no image of the study in {images_csv}")
            continue
        items.append(Item(study, _patient(study), split, images[study], {LABEL: label}, where))
    return items


def prepare_mura(out: Path, cfg: MuraConfig, *, workers: int = 0, progress: bool = True) -> PrepareSummary:
    root = Path(cfg.root)
    if not root.is_dir():
        raise PrepareError(f"{root}: MURA root folder not found")
    rejects = R.RejectLog()
    items = _read_part(root, "train", "train", rejects) + _read_part(root, "valid", "test", rejects)
    items = drop_split_leaks(items, rejects)
    resized = resize_items(out, root, items, rejects, workers=workers, progress=progress)
    items = resized.items
    hold_out(items, "validate", cfg.validate_size, cfg.seed)
    return write_prepared(
        out, root, resized, label_columns=(LABEL,), rejects=rejects, source="mura-v1.1", params=params_of(cfg),
        extra_meta={"evaluation": EVALUATION,
                    "benchmark": {"task": "mura", "metric": "study-level AUC (mean of the study's image probabilities)",
                                  "labels": {LABEL: "study label of *_labeled_studies.csv (1 abnormal, 0 normal)"},
                                  "test": "valid (official)", "split_requested": {"validate": cfg.validate_size},
                                  "split_paper": PAPER_SPLIT}},
    )
