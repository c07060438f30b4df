"""`prepare covidx`: COVIDx (COVID-Net, lindawangg/COVID-Net, docs/COVIDx.md), any version
with the 3-class lists (the paper used v4; later "A" lists have the same classes).

Expected:
    --root            the folder holding train/ and test/ (the images, as the COVID-Net
                      scripts or the Kaggle "covidx-cxr2" download write them)
    --train-list, --test-list   the label lists, e.g. train_COVIDx4.txt / test_COVIDx4.txt
                      (labels/ of the COVID-Net repository): one image per line, fields
                      separated by spaces: patient_id filename class [data_source]
                      class: normal | pneumonia | COVID-19 (the "B" lists' positive/negative
                      are refused: they are the binary task)

One manifest row per image, one-hot labels normal / pneumonia / COVID-19 (the task is
multi-class, scored by accuracy). The official test list is the test set; 300 images of train
(whole patients) are held out for validation. The paper (v4): 13,598 / 300 / 300.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from convirt_fast.data import rejects as R
from convirt_fast.prepare.common import PrepareError, PrepareSummary
from convirt_fast.prepare.downstream import Item, drop_split_leaks, hold_out, params_of, resize_items, write_prepared

CLASSES = ("normal", "pneumonia", "COVID-19")
PAPER_SPLIT = {"train": 13598, "validate": 300, "test": 300}


@dataclass(frozen=True)
class CovidxConfig:
    root: Path
    train_list: Path
    test_list: Path
    train_dir: str = "train"
    test_dir: str = "test"
    validate_size: int = PAPER_SPLIT["validate"]
    seed: int = 0


def read_list(path: Path, folder: str, split: str, rejects: R.RejectLog) -> list[Item]:
    if not Path(path).is_file():
        raise PrepareError(f"{path}: COVIDx label list not found")
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path}: not UTF-8 text: {e}") from e
    by_name = {c.lower(): c for c in CLASSES}
    items = []
    for n, line in enumerate(lines, start=1):
        where = f"{Path(path).name}:{n}"
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (3, 4):
            rejects.add(where, where, R.BAD_VALUE, f"{len(fields)} fields; expected patient_id filename class [source]")
            continue
        patient, filename, label = fields[0], fields[1], fields[2]
        cls = by_name.get(label.lower())
        if cls is None:
            rejects.add(filename, where, R.BAD_VALUE, f"class {label!r} is not one of {', '.join(CLASSES)}")
            continue
        items.append(Item(f"{folder}/{filename}", patient, split, [f"{folder}/{filename}"],
                          {c: int(c == cls) for c in CLASSES}, where))
    return items


def prepare_covidx(out: Path, cfg: CovidxConfig, *, workers: int = 0, progress: bool = True) -> PrepareSummary:
    root = Path(cfg.root)
    if not root.is_dir():
        raise PrepareError(f"{root}: COVIDx root folder not found")
    rejects = R.RejectLog()
    items, seen = [], set()
    for it in read_list(cfg.train_list, cfg.train_dir, "train", rejects) + read_list(cfg.test_list, cfg.test_dir,
                                                                                    "test", rejects):
        if it.study_id in seen:
            rejects.add(it.study_id, it.where, R.DUPLICATE_ROW, "image listed again")
            continue
        seen.add(it.study_id)
        items.append(it)
    items = drop_split_leaks(items, rejects)
    resized = resize_items(out, root, items, rejects, workers=workers, progress=progress)
    items = resized.items
    hold_out(items, "validate", cfg.validate_size, cfg.seed)
    return write_prepared(
        out, root, resized, label_columns=CLASSES, rejects=rejects, source="covidx", params=params_of(cfg),
        extra_meta={"benchmark": {"task": "covidx", "metric": "accuracy (3 classes)", "labels": list(CLASSES),
                                  "test": f"{Path(cfg.test_list).name} (official)",
                                  "split_requested": {"validate": cfg.validate_size},
                                  "split_paper": PAPER_SPLIT}},
    )
