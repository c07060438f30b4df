"""What the preparers of the paper's downstream sets share (rsna, chexpert, covidx, mura,
chexpert_8x200): reading a release's tables, resolving its image paths, holding out a
validation or test set by patient to a target size, dropping patients an official release puts
in two splits, and writing an image-only prepared folder (no reports, no sentence index).

Hold-outs: patients are taken in the order of a seeded hash of their id (the same seed and
release give the same split; a patient's place does not move when others are added), each
whole, while the held-out images stay within the target; the result is exact whenever patients
small enough remain, which on the real sets is always. Images are decoded before the hold-outs,
so the sizes count usable images. The sizes asked for and got go into manifest.json.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from convirt_fast.data import rejects as R
from convirt_fast.data.manifest import Study
from convirt_fast.data.resize import LONG_SIDE, ResizeTask, output_suffix, resize_all
from convirt_fast.prepare.common import LineCsvReader, PrepareError, PrepareSummary, finalize


@dataclass
class Item:
    """One manifest row to be: a study (or an image) of a release."""

    study_id: str
    patient: str
    split: str | None
    """train | validate | test; None while not assigned."""
    images: list[str]
    """Paths relative to the release root."""
    labels: dict[str, int | None]
    where: str
    """file:line of the release table the row comes from (for rejects)."""


def read_table(path: Path, required: Sequence[str] = (), *, fieldnames: Sequence[str] | None = None) -> list[tuple[int, dict]]:
    """(line, row) of a release CSV; `fieldnames` for headerless tables (MURA). Missing file or
    columns stop the prepare with their names."""
    if not path.is_file():
        raise PrepareError(f"{path}: not found (is --root the release folder?)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path}: not UTF-8 text: {e}") from e
    # (line, row) with the physical line each record starts on, quoted newlines counted, so that
    # a rejects.csv entry points at the record itself
    reader = LineCsvReader(io.StringIO(text, newline=""), fieldnames=fieldnames)
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise PrepareError(f"{path}: missing columns: {', '.join(missing)} (columns present: {', '.join(header)})")
    try:
        return list(reader)
    except csv.Error as e:
        raise PrepareError(f"{path}: line {reader.line_num}: unparseable CSV: {e}") from e


def release_relative(root: Path, path: str) -> str:
    """A path as a release table writes it ("CheXpert-v1.0-small/train/...", "MURA-v1.1/...")
    made relative to the release root: the leading release folder name is dropped when the
    file is not found with it."""
    path = path.strip().replace("\\", "/").lstrip("/")
    parts = path.split("/", 1)
    if len(parts) == 2 and not (root / path).exists() and (parts[0] == root.name or (root / parts[1]).exists()):
        return parts[1]
    return path


def seeded_order(keys: Iterable[str], seed: int) -> list[str]:
    return sorted(set(keys), key=lambda k: (hashlib.sha256(f"{seed}:{k}".encode()).digest(), k))


def hold_out(items: list[Item], split: str, target: int, seed: int, *, source: str = "train") -> int:
    """Moves whole patients of split `source` to `split` until `target` images are held out
    (module doc); returns the number held out. Raises when nothing of `source` would remain."""
    if target <= 0:
        return 0
    images: dict[str, int] = defaultdict(int)
    for it in items:
        if it.split == source:
            images[it.patient] += len(it.images)
    total = sum(images.values())
    if target >= total:
        raise PrepareError(f"{source} holds {total} images; holding out {target} for {split} would leave none "
                           f"(pass a smaller size)")
    chosen, count = set(), 0
    for patient in seeded_order(images, seed):
        if count + images[patient] <= target:
            chosen.add(patient)
            count += images[patient]
            if count == target:
                break
    for it in items:
        if it.split == source and it.patient in chosen:
            it.split = split
    return count


def drop_split_leaks(items: list[Item], rejects: R.RejectLog, keep: str = "test") -> list[Item]:
    """A patient an official release lists in two splits: its rows outside `keep` are dropped
    (the official test set stays as published), each in rejects.csv."""
    splits: dict[str, set[str]] = defaultdict(set)
    for it in items:
        splits[it.patient].add(it.split or "")
    kept = []
    for it in items:
        if len(splits[it.patient]) > 1 and it.split != keep:
            rejects.add(it.study_id, it.where, R.PATIENT_IN_TWO_SPLITS,
                        f"patient {it.patient} is in {sorted(splits[it.patient])}; its {it.split} rows dropped")
        else:
            kept.append(it)
    return kept


@dataclass
class Resized:
    """Items whose images decoded, with their prepared paths (`dest`), and the resize counts."""

    items: list[Item]
    dest: dict[str, str]
    written: int
    skipped: int


def resize_items(out: Path, root: Path, items: list[Item], rejects: R.RejectLog, *, workers: int = 0,
                 progress: bool = True, long_side: int = LONG_SIDE) -> Resized:
    """Resizes every item's images into out/images/<release path> (DICOM and PNG become PNG,
    JPEG stays JPEG); an image that does not decode goes to rejects.csv, an item left without
    an image too. Done before the hold-outs, so that their sizes count usable images only."""
    out = Path(out)
    sources = sorted({p for it in items for p in it.images})
    dest = {p: str(Path("images") / Path(p).with_suffix(output_suffix(Path(p)))) for p in sources}
    tasks = [ResizeTask(root / p, out / dest[p], item=p) for p in sources]
    results = {r.task.item: r for r in resize_all(tasks, long_side=long_side, workers=workers, progress=progress)}
    kept = []
    for it in items:
        good = []
        for p in it.images:
            res = results[p]
            if res.ok:
                good.append(p)
            else:
                rejects.add(it.study_id, p, res.reason, res.detail)
        if not good:
            if len(it.images) > 1:
                rejects.add(it.study_id, it.where, R.NO_IMAGE_LEFT, "no image of the study decodes")
            continue
        it.images = good
        kept.append(it)
    return Resized(kept, dest, sum(r.ok and not r.skipped for r in results.values()),
                   sum(r.skipped for r in results.values()))


def write_prepared(out: Path, root: Path, resized: Resized, *, label_columns: Sequence[str], rejects: R.RejectLog,
                   source: str, params: dict, extra_meta: dict) -> PrepareSummary:
    """The image-only prepared folder of `resized.items` (every one with a split by now)."""
    studies, keys = [], []
    for it in resized.items:
        if it.split is None:
            raise AssertionError(f"{it.study_id}: no split assigned")  # a preparer's bug, not bad input
        studies.append(Study(it.study_id, it.patient, it.split, tuple(resized.dest[p] for p in it.images), "",
                             it.labels))
        keys.append([str(root / p) for p in it.images])
    meta = {**extra_meta, "split_images": _split_images(studies)}
    return finalize(Path(out), studies, image_keys=keys, report_files=[""] * len(studies),
                    label_columns=label_columns, rejects=rejects, source=source, params=params,
                    images_written=resized.written, images_skipped=resized.skipped, extra_meta=meta, text=False)


def _split_images(studies: Sequence[Study]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for s in studies:
        out[s.split] += len(s.images)
    return dict(sorted(out.items()))


def params_of(cfg) -> dict:
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}
