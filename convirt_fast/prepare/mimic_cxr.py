"""`prepare mimic-cxr`: MIMIC-CXR-JPG 2.0.0 as published on PhysioNet.

Expected under the root (each CSV plain or gzipped):
    mimic-cxr-2.0.0-metadata.csv(.gz)   dicom_id, subject_id, study_id, ViewPosition, ...
    mimic-cxr-2.0.0-split.csv(.gz)      dicom_id, study_id, subject_id, split (train/validate/test)
    mimic-cxr-2.0.0-chexpert.csv(.gz)   subject_id, study_id, 14 labels (1.0, 0.0, -1.0, blank)
    files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg   (or <dicom_id>.dcm: the MIMIC-CXR DICOM release,
             under --image-root when it is not the CSVs' root; DICOMs are written as PNG)
    reports: files/pXX/pNNNNNNNN/sNNNNNNNN.txt, or mimic-cxr-reports.zip (from MIMIC-CXR),
             under the root or given by --reports (a folder or the zip)

One manifest row per study: its images with an accepted view (default frontal: PA, AP), the
official patient-level split, the report (Findings + Impression are taken by the sentence
index), the CheXpert labels (1, 0, -1, blank kept apart). Everything dropped is in rejects.csv
with the table and the physical line of its row (of the decompressed text for a .gz), the image
path(s), study and subject ids and the report file. A study none of whose images is kept at the
metadata stage (no accepted view, no split) gets an entry of its own (no_image_left) beside
its images' entries.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from convirt_fast.data import rejects as R
from convirt_fast.data.manifest import Study, parse_label
from convirt_fast.data.resize import LONG_SIDE, ResizeTask, output_suffix, resize_all
from convirt_fast.prepare.common import LineCsvReader, PrepareError, PrepareSummary, finalize

METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
REPORTS_ZIP = "mimic-cxr-reports.zip"
CHEXPERT_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
CHEXPERT_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)
DEFAULT_VIEWS = ("PA", "AP")
_REPORT_NAME = re.compile(r"(?:^|/)p\d{2}/p(\d+)/s(\d+)\.txt$")


@dataclass(frozen=True)
class MimicConfig:
    root: Path
    views: tuple[str, ...] = DEFAULT_VIEWS
    """Accepted ViewPosition values; empty = every view."""
    reports: Path | None = None
    """A folder holding files/pXX/... reports, or the reports zip; default: found under root."""
    long_side: int = LONG_SIDE
    image_root: Path | None = None
    """Folder holding files/pXX/... images; default: root."""
    image_format: str = "auto"
    """jpg | dcm | auto (per image: the .jpg when present, else the .dcm)."""

    def __post_init__(self) -> None:
        if self.image_format not in ("auto", "jpg", "dcm"):
            raise ValueError(f"image_format must be auto, jpg or dcm, got {self.image_format!r}")


def _image_name(folder: Path, dicom: str, image_format: str) -> str:
    if image_format == "auto":
        use_dcm = not (folder / f"{dicom}.jpg").exists() and (folder / f"{dicom}.dcm").exists()
        return f"{dicom}.dcm" if use_dcm else f"{dicom}.jpg"
    return f"{dicom}.{image_format}"


def _find_csv(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise PrepareError(f"{root}: neither {name} nor {name}.gz found")


def _read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line, row) of a plain or gzipped table; line: where the row starts in the (decompressed)
    text."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            reader = LineCsvReader(f)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise PrepareError(f"{path}: missing columns: {', '.join(missing)}")
            return list(reader)
    except (OSError, UnicodeDecodeError, EOFError, csv.Error) as e:
        raise PrepareError(f"{path}: unreadable: {type(e).__name__}: {e}") from e


def _study_dir(subject: str, study: str) -> str:
    return f"files/p{subject[:2]}/p{subject}/s{study}"


class _Reports:
    """Report text by (subject_id, study_id) from a folder tree or the reports zip."""

    def __init__(self, root: Path, override: Path | None) -> None:
        self.zip: zipfile.ZipFile | None = None
        self.names: dict[tuple[str, str], str] = {}
        self.folder: Path | None = None
        where = override or root
        zpath = where if where.is_file() else where / REPORTS_ZIP
        if zpath.is_file():
            try:
                self.zip = zipfile.ZipFile(zpath)
            except zipfile.BadZipFile as e:
                raise PrepareError(f"{zpath}: not a readable zip: {e}") from e
            self.source = zpath
            for name in self.zip.namelist():
                if m := _REPORT_NAME.search(name):
                    self.names[(m.group(1), m.group(2))] = name
        else:
            self.folder = where
            self.source = where

    def file(self, subject: str, study: str) -> str:
        if self.zip is not None:
            return f"{self.source.name}:{self.names.get((subject, study), _study_dir(subject, study) + '.txt')}"
        return f"{_study_dir(subject, study)}.txt"

    def read(self, subject: str, study: str) -> bytes | None:
        if self.zip is not None:
            name = self.names.get((subject, study))
            return None if name is None else self.zip.read(name)
        path = self.folder / f"{_study_dir(subject, study)}.txt"
        return path.read_bytes() if path.is_file() else None


def prepare_mimic_cxr(out: Path, cfg: MimicConfig, *, workers: int = 0, progress: bool = True) -> PrepareSummary:
    out, root = Path(out), Path(cfg.root)
    if not root.is_dir():
        raise PrepareError(f"{root}: MIMIC-CXR-JPG root folder not found")
    rejects = R.RejectLog()
    meta_path, split_path, chex_path = _find_csv(root, METADATA), _find_csv(root, SPLIT), _find_csv(root, CHEXPERT)
    metadata = _read_csv(meta_path, METADATA_COLUMNS)
    split_of = _split_by_dicom(_read_csv(split_path, SPLIT_COLUMNS), split_path, rejects)
    labels_of = _labels_by_study(_read_csv(chex_path, CHEXPERT_COLUMNS), chex_path, rejects)
    reports = _Reports(root, cfg.reports)
    image_root = Path(cfg.image_root) if cfg.image_root else root

    def image_path(subject: str, study: str, dicom: str) -> str:
        """The image's path under the image root, as the release names it."""
        return f"{_study_dir(subject, study)}/{_image_name(image_root / _study_dir(subject, study), dicom, cfg.image_format)}"

    # Images per study, after the view filter and the split lookup.
    views = {v.upper() for v in cfg.views}
    study_images: dict[tuple[str, str], list[str]] = defaultdict(list)
    study_split: dict[tuple[str, str], set[str]] = defaultdict(set)
    study_line: dict[tuple[str, str], int] = {}  # the study's first metadata row
    dropped: dict[tuple[str, str], list[str]] = defaultdict(list)  # images left out, "dicom: reason"
    line_of: dict[str, int] = {}
    seen: set[str] = set()
    for line, row in metadata:
        dicom, subject, study = (row["dicom_id"] or "").strip(), (row["subject_id"] or "").strip(), (row["study_id"] or "").strip()
        where = f"{meta_path.name}:{line}"
        if not (dicom and subject.isdigit() and study.isdigit()):
            rejects.add(dicom or where, where, R.BAD_VALUE, "dicom_id, subject_id or study_id empty or not a number",
                        R.Origin(meta_path.name, line, "", study, subject))
            continue
        key = (subject, study)
        study_line.setdefault(key, line)

        def reject(reason: str, detail: str) -> None:
            rejects.add(dicom, where, reason, detail, R.Origin(meta_path.name, line, image_path(subject, study, dicom), study, subject))

        if dicom in seen:
            reject(R.DUPLICATE_ROW, "dicom_id repeated in the metadata")
            continue
        seen.add(dicom)
        line_of[dicom] = line
        view = (row["ViewPosition"] or "").strip().upper()
        if views and view not in views:
            reject(R.VIEW_FILTERED, f"ViewPosition {view or '(blank)'} not in {sorted(views)}")
            dropped[key].append(f"{dicom}: {R.VIEW_FILTERED} ({view or 'blank'})")
            continue
        if dicom not in split_of:
            reject(R.NO_SPLIT, f"dicom_id not in {split_path.name}")
            dropped[key].append(f"{dicom}: {R.NO_SPLIT}")
            continue
        study_images[key].append(dicom)
        study_split[key].add(split_of[dicom])

    def study_origin(key: tuple[str, str], dicoms) -> R.Origin:
        subject, study = key
        return R.Origin(meta_path.name, study_line[key], R.join_images(image_path(subject, study, d) for d in dicoms),
                        study, subject, reports.file(subject, study))

    # A study none of whose images got past the metadata: an entry of its own, by study id.
    for key in sorted(set(dropped) - set(study_images), key=lambda k: (int(k[0]), int(k[1]))):
        rejects.add(key[1], f"{meta_path.name}:{study_line[key]}", R.NO_IMAGE_LEFT,
                    f"no image of an accepted view with a split: {'; '.join(dropped[key])}", study_origin(key, ()))

    # Reports, read before any image work: a study without a usable report costs no resize.
    texts: dict[tuple[str, str], str] = {}
    for key in sorted(study_images, key=lambda k: (int(k[0]), int(k[1]))):
        subject, study = key

        def reject(file: str, reason: str, detail: str) -> None:
            rejects.add(study, file, reason, detail, study_origin(key, study_images[key]))

        if len(study_split[key]) > 1:
            reject(_study_dir(subject, study), R.BAD_VALUE, f"images in several splits: {sorted(study_split[key])}")
            continue
        raw = reports.read(subject, study)
        if raw is None:
            reject(reports.file(subject, study), R.MISSING_REPORT, "no report file")
            continue
        if len(raw) == 0:
            reject(reports.file(subject, study), R.EMPTY_REPORT, "zero-byte report file")
            continue
        try:
            texts[key] = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            reject(reports.file(subject, study), R.NON_UTF8_REPORT, str(e))

    names = {d: _image_name(image_root / _study_dir(s, st), d, cfg.image_format)
             for (s, st) in texts for d in study_images[(s, st)]}
    dest = {d: f"images/{_study_dir(s, st)}/{Path(names[d]).with_suffix(output_suffix(Path(names[d])))}"
            for (s, st) in texts for d in study_images[(s, st)]}
    tasks = [
        ResizeTask(image_root / _study_dir(s, st) / names[d], out / dest[d], item=d)
        for (s, st) in texts
        for d in study_images[(s, st)]
    ]
    results = {r.task.item: r for r in resize_all(tasks, long_side=cfg.long_side, workers=workers, progress=progress)}
    studies, keys, files, origins = [], [], [], []
    for (subject, study), text in texts.items():
        images, sources = [], []
        for d in study_images[(subject, study)]:
            res = results[d]
            path = f"{_study_dir(subject, study)}/{names[d]}"
            if res.ok:
                images.append(dest[d])
                sources.append(path)
            else:
                rejects.add(d, path, res.reason, res.detail,
                            R.Origin(meta_path.name, line_of[d], path, study, subject, reports.file(subject, study)))
        if not images:
            rejects.add(study, _study_dir(subject, study), R.NO_IMAGE_LEFT, "no usable image of an accepted view",
                        study_origin((subject, study), study_images[(subject, study)]))
            continue
        origins.append(R.Origin(meta_path.name, study_line[(subject, study)], R.join_images(sources), study, subject,
                                reports.file(subject, study)))
        (split,) = study_split[(subject, study)]
        labels = labels_of.get((subject, study), {c: None for c in CHEXPERT_LABELS})
        studies.append(Study(study, subject, split, tuple(images), text, labels))
        keys.append(images)
        files.append(reports.file(subject, study))
    written = sum(r.ok and not r.skipped for r in results.values())
    return finalize(
        out,
        studies,
        image_keys=keys,
        report_files=files,
        reject_origins=origins,
        label_columns=CHEXPERT_LABELS,
        rejects=rejects,
        source="mimic-cxr-jpg-2.0.0",
        params={"root": str(root), "views": list(cfg.views), "reports": str(reports.source), "long_side": cfg.long_side,
                "image_root": str(image_root), "image_format": cfg.image_format},
        images_written=written,
        images_skipped=sum(r.skipped for r in results.values()),
        threads=workers,
    )


def _split_by_dicom(rows: list[dict[str, str]], path: Path, rejects: R.RejectLog) -> dict[str, str]:
    out: dict[str, str] = {}
    for line, row in rows:
        dicom, split = (row["dicom_id"] or "").strip(), (row["split"] or "").strip()
        where = f"{path.name}:{line}"
        origin = R.Origin(path.name, line, "", (row["study_id"] or "").strip(), (row["subject_id"] or "").strip())
        if split not in ("train", "validate", "test"):
            rejects.add(dicom, where, R.BAD_VALUE, f"split {split!r} is not train/validate/test", origin)
        elif dicom in out and out[dicom] != split:
            rejects.add(dicom, where, R.DUPLICATE_ROW, f"dicom_id listed again with split {split!r}", origin)
        else:
            out[dicom] = split
    return out


def _labels_by_study(rows: list[dict[str, str]], path: Path, rejects: R.RejectLog) -> dict[tuple[str, str], dict[str, int | None]]:
    out: dict[tuple[str, str], dict[str, int | None]] = {}
    for line, row in rows:
        key = ((row["subject_id"] or "").strip(), (row["study_id"] or "").strip())
        where = f"{path.name}:{line}"
        origin = R.Origin(path.name, line, "", key[1], key[0])
        try:
            labels = {c: parse_label(row[c] or "") for c in CHEXPERT_LABELS}
        except ValueError as e:
            rejects.add(key[1], where, R.BAD_VALUE, f"labels left blank: {e}", origin)
            continue
        if key in out:
            rejects.add(key[1], where, R.DUPLICATE_ROW, "study listed again in the CheXpert labels; first kept", origin)
            continue
        out[key] = labels
    return out
