"""`prepare rsna`: the RSNA Pneumonia Detection Challenge (Kaggle, 2018), stage 2 release.

Expected under the root (the Kaggle download, unzipped):
    stage_2_train_labels.csv     patientId,x,y,width,height,Target: one row per box, one row with
                                 empty box columns and Target 0 for an image without one
    stage_2_train_images/<patientId>.dcm   one DICOM per patient (8-bit MONOCHROME2, 1024 x 1024;
                                 a compressed transfer syntax is decoded by the dicom extra)
    (stage_2_detailed_class_info.csv, stage_2_test_images/ and the rest are not read)

One manifest row per patientId, label `Pneumonia` = Target (boxes ignored; the rows of a patient
must agree). The paper's split is 25,184 / 1,500 / 3,000: 25,184 + 1,500 = 26,684, the patients
of stage_2_train_labels.csv, and 3,000 is the size of the stage 2 test set, whose labels are not
in the Kaggle release. So by default 1,500 (validate) and 3,000 (test) patients are held out of
the labelled train set (22,184 left for train); `--test-labels` names a labels CSV of the same
layout for a test set of your own (images under `--test-images`), which gives the paper's sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from convirt_fast.data import rejects as R
from convirt_fast.prepare.common import PrepareError, PrepareSummary
from convirt_fast.prepare.downstream import Item, drop_split_leaks, hold_out, params_of, read_table, resize_items, write_prepared

LABELS_CSV = "stage_2_train_labels.csv"
IMAGES = "stage_2_train_images"
COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
LABEL = "Pneumonia"
PAPER_SPLIT = {"train": 25184, "validate": 1500, "test": 3000}


@dataclass(frozen=True)
class RsnaConfig:
    root: Path
    seed: int = 0
    validate_size: int = PAPER_SPLIT["validate"]
    test_size: int = PAPER_SPLIT["test"]
    """Held out of the train labels when no test labels are given."""
    labels: str = LABELS_CSV
    images: str = IMAGES
    test_labels: Path | None = None
    test_images: str = "stage_2_test_images"


def _read_labels(path: Path, images: str, split: str | None, rejects: R.RejectLog) -> list[Item]:
    rows = read_table(path, COLUMNS)
    target: dict[str, int] = {}
    where: dict[str, str] = {}
    bad: set[str] = set()
    for line, row in rows:
        pid, value = (row["patientId"] or "").strip(), (row["Target"] or "").strip()
        at = f"{path.name}:{line}"
        if not pid:
            rejects.add(at, at, R.MISSING_VALUE, "empty patientId")
            continue
        if value not in ("0", "1"):
            rejects.add(pid, at, R.BAD_VALUE, f"Target {value!r} is not 0 or 1")
            bad.add(pid)
            continue
        if pid in target and target[pid] != int(value):
            rejects.add(pid, at, R.BAD_VALUE, f"Target {value} disagrees with an earlier row of the patient")
            bad.add(pid)
            continue
        target[pid] = int(value)
        where.setdefault(pid, at)
    return [Item(pid, pid, split, [f"{images}/{pid}.dcm"], {LABEL: t}, where[pid])
            for pid, t in target.items() if pid not in bad]


def prepare_rsna(out: Path, cfg: RsnaConfig, *, workers: int = 0, progress: bool = True) -> PrepareSummary:
    root = Path(cfg.root)
    if not root.is_dir():
        raise PrepareError(f"{root}: RSNA root folder not found")
    rejects = R.RejectLog()
    items = _read_labels(root / cfg.labels, cfg.images, "train", rejects)
    if cfg.test_labels is not None:
        test = _read_labels(Path(cfg.test_labels), cfg.test_images, "test", rejects)
        if not test:
            raise PrepareError(f"{cfg.test_labels}: no usable test label")
        items = drop_split_leaks(items + test, rejects)
    resized = resize_items(out, root, items, rejects, workers=workers, progress=progress)
    items = resized.items
    if cfg.test_labels is None:
        hold_out(items, "test", cfg.test_size, cfg.seed)
    hold_out(items, "validate", cfg.validate_size, cfg.seed + 1)
    return write_prepared(
        out, root, resized, label_columns=(LABEL,), rejects=rejects, source="rsna-pneumonia-stage2",
        params=params_of(cfg),
        extra_meta={"benchmark": {"task": "rsna", "labels": {LABEL: "Target of stage_2_train_labels.csv (1: opacity "
                                  "suggestive of pneumonia); boxes ignored"}, "metric": "AUC",
                                  "split_requested": {"validate": cfg.validate_size,
                                                      "test": "test labels" if cfg.test_labels else cfg.test_size},
                                  "split_paper": PAPER_SPLIT}},
    )
