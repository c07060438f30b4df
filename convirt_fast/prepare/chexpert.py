"""`prepare chexpert`: CheXpert-v1.0 (or CheXpert-v1.0-small), Stanford ML Group.

Expected under the root (the release folder, e.g. CheXpert-v1.0-small/):
    train.csv, valid.csv   Path,Sex,Age,Frontal/Lateral,AP/PA, then 14 observations: No Finding,
                           Enlarged Cardiomediastinum, Cardiomegaly, Lung Opacity, Lung Lesion,
                           Edema, Consolidation, Pneumonia, Atelectasis, Pneumothorax, Pleural
                           Effusion, Pleural Other, Fracture, Support Devices. Values 1.0
                           (positive), 0.0 (negative), -1.0 (uncertain), blank (not mentioned);
                           valid.csv (radiologist consensus) has only 1.0 / 0.0.
    Path = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg" (the release
           folder's name first; resolved against the root with or without it)

One manifest row per image, the 5 competition labels (Atelectasis, Cardiomegaly, Consolidation,
Edema, Pleural Effusion): uncertain -> 0 (U-zeros, default) or 1 (`--uncertain ones`), blank ->
0 (not mentioned: negative, as the CheXpert competition scores it). Frontal images only unless
`--views all`. The official valid set is the test set; 5,000 images of train (whole patients)
are held out for validation. The paper's 218,414 / 5,000 / 234 are all views (223,414 train
images, 234 valid images): `--views all` gives them; frontal only gives about 191,000 / 5,000 /
202.
"""

from __future__ import annotations

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

OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)  # fmt: skip
COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS)
COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
PAPER_SPLIT = {"train": 218414, "validate": 5000, "test": 234}
_VALUES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1, "": None}


@dataclass(frozen=True)
class ChexpertConfig:
    root: Path
    uncertain: str = "zeros"
    """zeros (U-zeros) | ones (U-ones): what -1.0 becomes."""
    views: str = "frontal"
    """frontal | all"""
    validate_size: int = PAPER_SPLIT["validate"]
    seed: int = 0

    def __post_init__(self) -> None:
        if self.uncertain not in ("zeros", "ones"):
            raise ValueError(f"--uncertain must be zeros or ones, got {self.uncertain!r}")
        if self.views not in ("frontal", "all"):
            raise ValueError(f"--views must be frontal or all, got {self.views!r}")


def parse_observation(value: str) -> int | None:
    """CheXpert's encoding: '1.0', '0.0', '-1.0', '' -> 1, 0, -1, None; ValueError otherwise."""
    v = value.strip()
    if v not in _VALUES:
        raise ValueError(f"{value!r} is not 1.0, 0.0, -1.0 or blank")
    return _VALUES[v]


def patient_of(path: str) -> str | None:
    return next((p for p in path.split("/") if p.startswith("patient")), None)


def read_chexpert(root: Path, name: str, split: str, rejects: R.RejectLog, *, views: str) -> list[tuple[Item, dict]]:
    """(item, all 14 observations) per image of `name`, after the view filter; bad rows rejected."""
    path = root / name
    out = []
    for line, row in read_table(path, COLUMNS):
        where = f"{name}:{line}"
        rel = release_relative(root, row["Path"] or "")
        patient = patient_of(rel)
        if not rel or patient is None:
            rejects.add(where, where, R.BAD_VALUE, f"Path {row['Path']!r} has no patientNNNNN folder")
            continue
        if views == "frontal" and (row["Frontal/Lateral"] or "").strip() != "Frontal":
            rejects.add(rel, where, R.VIEW_FILTERED, f"Frontal/Lateral is {row['Frontal/Lateral']!r}")
            continue
        try:
            observed = {c: parse_observation(row[c] or "") for c in OBSERVATIONS}
        except ValueError as e:
            rejects.add(rel, where, R.BAD_VALUE, f"label {e}")
            continue
        study_id = str(Path(rel).with_suffix(""))
        out.append((Item(study_id, patient, split, [rel], {}, where), observed))
    return out


def prepare_chexpert(out: Path, cfg: ChexpertConfig, *, workers: int = 0, progress: bool = True) -> PrepareSummary:
    root = Path(cfg.root)
    if not root.is_dir():
        raise PrepareError(f"{root}: CheXpert root folder not found")
    rejects = R.RejectLog()
    rows = read_chexpert(root, "train.csv", "train", rejects, views=cfg.views)
    rows += read_chexpert(root, "valid.csv", "test", rejects, views=cfg.views)
    uncertain = 0 if cfg.uncertain == "zeros" else 1
    items, seen = [], set()
    for item, observed in rows:
        if item.study_id in seen:
            rejects.add(item.study_id, item.where, R.DUPLICATE_ROW, "image listed again")
            continue
        seen.add(item.study_id)
        item.labels = {c: uncertain if observed[c] == -1 else (observed[c] or 0) for c in COMPETITION}
        items.append(item)
    items = drop_split_leaks(items, rejects)
    resized = resize_items(out, root, items, rejects, workers=workers, progress=progress)
    items = resized.items
    hold_out(items, "validate", cfg.validate_size, cfg.seed)
    return write_prepared(
        out, root, resized, label_columns=COMPETITION, rejects=rejects, source=f"chexpert:{root.name}",
        params=params_of(cfg),
        extra_meta={"benchmark": {"task": "chexpert", "metric": "mean AUC over the 5 labels",
                                  "labels": {"positive": "1.0", "negative": "0.0",
                                             "uncertain (-1.0)": f"-> {uncertain} (U-{cfg.uncertain})",
                                             "blank": "-> 0 (not mentioned)"},
                                  "views": cfg.views, "test": "valid.csv (official)",
                                  "split_requested": {"validate": cfg.validate_size},
                                  "split_paper": PAPER_SPLIT}},
    )
