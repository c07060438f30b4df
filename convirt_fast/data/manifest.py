"""The manifest: one table per prepared data set, one row per study.

Layout of a prepared folder (the data root; every path in the manifest is relative to it):

    manifest.csv     one row per study, UTF-8 CSV (RFC 4180 quoting; reports keep their newlines)
    manifest.json    metadata: format, source, label columns, counts, reject counts, and the
                     SHA-256 of manifest.csv and of the sentence index (the content hash), each
                     with the file's size and mtime beside it (<key>_size, <key>_mtime_ns)
    sentences.idx    the sentence index (convirt_fast.text.SentenceIndex), row i = study i
    rejects.csv      what was dropped and why (see convirt_fast.data.rejects)
    images/...       the images, pre-resized to 256 px on the long side

manifest.csv columns, in this order:

    study_id    str    unique within the manifest
    patient_id  str    splits never share a patient (checked at prepare time)
    split       str    train | validate | test (| retrieval for SynthCXR's retrieval images)
    images      str    JSON list of image paths relative to the data root, at least one
    report      str    the report text as given (section extraction happens in the index)
    <label>...  str    optional label columns, one per label: "1" positive, "0" negative,
                       "-1" uncertain, "" blank (not mentioned); names listed in manifest.json

manifest.json is written last, atomically: a folder without it is an unfinished prepare.

Integrity (`verify_files`): loading checks each recorded file cheaply, by size and mtime; a size
that differs is refused at once (a half-copied or changed folder), an mtime that differs (a copy
that did not keep times, an edit) means the file is hashed in full, as do `full_hash=True` and
`prepare check`. Folders prepared before sizes and times were recorded are hashed in full.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from convirt_fast.io import atomic_write, file_sha256

FORMAT = "convirt_fast.manifest/1"
MANIFEST_CSV = "manifest.csv"
META_JSON = "manifest.json"
SENTENCE_INDEX = "sentences.idx"
REJECTS_CSV = "rejects.csv"
CORE_COLUMNS = ("study_id", "patient_id", "split", "images", "report")
SPLITS = ("train", "validate", "test", "retrieval")

# The files manifest.json records a hash of: (meta key, default name). The hash is "<key>_sha256",
# the size and mtime beside it "<key>_size" and "<key>_mtime_ns".
HASHED_FILES = (("manifest", MANIFEST_CSV), ("sentence_index", SENTENCE_INDEX))

# A report can be far longer than csv's default 128 KiB field limit.
csv.field_size_limit(1 << 30)
log = logging.getLogger(__name__)
_hashed: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> SHA-256 verified in this process
_told_unstamped: set[str] = set()  # folders whose manifest.json records no sizes/times (said once each)


class ManifestError(ValueError):
    """A manifest that cannot be used: the message names the file and the problem."""


@dataclass(frozen=True)
class Study:
    """One row of the manifest."""

    study_id: str
    patient_id: str
    split: str
    images: tuple[str, ...]
    report: str
    labels: dict[str, int | None] = field(default_factory=dict)
    """label column -> 1, 0, -1 (uncertain) or None (blank)."""


def _format_label(value: int | None) -> str:
    return "" if value is None else str(int(value))


def parse_label(text: str) -> int | None:
    """'1', '1.0', '0', '-1', '-1.0' -> int; '' -> None. Anything else raises ValueError."""
    text = text.strip()
    if text == "":
        return None
    value = float(text)
    if math.isnan(value):
        return None
    if value not in (1.0, 0.0, -1.0):
        raise ValueError(f"label {text!r} is not one of 1, 0, -1 or blank")
    return int(value)


@dataclass
class Manifest:
    """A loaded manifest. `root` is the folder that image paths are relative to."""

    root: Path
    studies: list[Study]
    label_columns: tuple[str, ...]
    meta: dict

    def __len__(self) -> int:
        return len(self.studies)

    @property
    def sentence_index_path(self) -> Path:
        return self.root / self.meta.get("sentence_index", SENTENCE_INDEX)

    def split_indices(self, split: str) -> list[int]:
        return [i for i, s in enumerate(self.studies) if s.split == split]

    def image_paths(self, i: int) -> list[Path]:
        return [self.root / p for p in self.studies[i].images]

    def label_matrix(self) -> np.ndarray:
        """(studies, labels) float32: 1, 0, -1, and NaN for blank."""
        out = np.full((len(self.studies), len(self.label_columns)), np.nan, dtype=np.float32)
        for i, s in enumerate(self.studies):
            for j, name in enumerate(self.label_columns):
                v = s.labels.get(name)
                if v is not None:
                    out[i, j] = v
        return out


def write_manifest_csv(path: Path, studies: Sequence[Study], label_columns: Sequence[str]) -> str:
    """Writes manifest.csv atomically; returns its SHA-256."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow([*CORE_COLUMNS, *label_columns])
        for s in studies:
            w.writerow(
                [s.study_id, s.patient_id, s.split, json.dumps(list(s.images)), s.report]
                + [_format_label(s.labels.get(c)) for c in label_columns]
            )
    return file_sha256(path)


def write_meta(path: Path, meta: dict) -> None:
    """Writes manifest.json atomically. Beside each hash it records (HASHED_FILES) it records the
    file's size and mtime as it is now, for load_manifest's cheap check."""
    path = Path(path)
    meta = dict(meta)
    for key, default in HASHED_FILES:
        hashed = path.parent / meta.get(key, default)
        if f"{key}_sha256" in meta and hashed.is_file():
            st = hashed.stat()
            meta[f"{key}_size"], meta[f"{key}_mtime_ns"] = st.st_size, st.st_mtime_ns
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")


def _resolve(path: Path) -> tuple[Path, Path]:
    """(manifest.csv, root) from a prepared folder or a manifest.csv path."""
    path = Path(path)
    csv_path = path / MANIFEST_CSV if path.is_dir() else path
    if not csv_path.is_file():
        raise ManifestError(f"{csv_path}: no manifest here (is the prepare finished?)")
    return csv_path, csv_path.parent


def read_meta(path: Path) -> dict | None:
    csv_path, root = _resolve(path)
    meta_path = root / META_JSON
    if not meta_path.is_file():
        return None
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{meta_path}: unreadable metadata: {e}") from e


def _remedy(root: Path, meta: dict) -> str:
    return (f"copy the folder again from where it was prepared, or prepare it again (python -m convirt_fast.prepare "
            f"<source> ... --out {root}; its source: {meta.get('source', 'unknown')!r}); "
            f"python -m convirt_fast.prepare check --train {root} verifies every file in full")


def verify_files(root: Path, meta: dict, *, full_hash: bool = False, manifest_csv: Path | None = None) -> None:
    """Refuse a prepared folder whose manifest.csv or sentence index is not the one prepared,
    naming the file and what to run. Cheap by default: a file whose size and mtime are those
    recorded (and older than manifest.json itself, which rules out an edit in the same clock
    tick) is taken as is; a size that differs is refused without reading; otherwise, and always
    with `full_hash`, the file is hashed (once per process for a given size and mtime).
    `manifest_csv`: the table being loaded, when not the one manifest.json names."""
    root = Path(root)
    meta_json = root / META_JSON
    meta_mtime = meta_json.stat().st_mtime_ns if meta_json.is_file() else -1
    for key, default in HASHED_FILES:
        expected = meta.get(f"{key}_sha256")
        if expected is None:
            continue
        path = manifest_csv if key == "manifest" and manifest_csv is not None else root / meta.get(key, default)
        if not path.is_file():
            raise ManifestError(f"{path}: missing, but {META_JSON} records it: the folder is incomplete; "
                                f"{_remedy(root, meta)}")
        st = path.stat()
        size, mtime = meta.get(f"{key}_size"), meta.get(f"{key}_mtime_ns")
        if size is not None and st.st_size != size:
            raise ManifestError(f"{path}: {st.st_size:,} bytes, {META_JSON} records {size:,}: the file changed or was "
                                f"copied incompletely after it was prepared; {_remedy(root, meta)}")
        stamp = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if not full_hash:
            if size is not None and st.st_mtime_ns == mtime and mtime < meta_mtime:
                continue
            if _hashed.get(stamp) == expected:
                continue
            if size is None and str(root) not in _told_unstamped:
                _told_unstamped.add(str(root))
                log.warning("%s: %s records no file sizes and times (prepared by an older version): the files "
                            "are hashed in full when loaded (once per process); prepare the folder again to record "
                            "them", root, META_JSON)
        actual = file_sha256(path)
        if actual != expected:
            raise ManifestError(f"{path}: content hash {actual[:12]}... does not match {META_JSON} "
                                f"({expected[:12]}...): the file changed after it was prepared; {_remedy(root, meta)}")
        _hashed[stamp] = actual


def load_manifest(path: Path, *, verify_hash: bool = True, full_hash: bool = False) -> Manifest:
    """Loads and checks a manifest (a prepared folder or its manifest.csv).

    Refuses, naming the file and the problem: a manifest.csv or sentence index that is not the one
    prepared (verify_files: cheap size and mtime check, full hash with `full_hash`; none without
    `verify_hash`), missing columns (all of them named), label columns that manifest.json lists
    but the table lacks, an empty image list, a bad label value, an unknown split or a repeated
    study id.
    """
    csv_path, root = _resolve(path)
    meta = read_meta(csv_path) or {}
    if meta and meta.get("format") != FORMAT:
        raise ManifestError(f"{root / META_JSON}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if verify_hash:
        verify_files(root, meta, full_hash=full_hash, manifest_csv=csv_path)
    with open(csv_path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ManifestError(f"{csv_path}: empty file, no header")
        label_columns = tuple(meta.get("label_columns", [c for c in header if c not in CORE_COLUMNS]))
        missing = [c for c in (*CORE_COLUMNS, *label_columns) if c not in header]
        if missing:
            raise ManifestError(f"{csv_path}: missing columns: {', '.join(missing)}")
        col = {name: header.index(name) for name in (*CORE_COLUMNS, *label_columns)}
        studies: list[Study] = []
        seen: set[str] = set()
        for line, row in enumerate(reader, start=2):
            studies.append(_parse_row(csv_path, line, row, header, col, label_columns, seen))
    return Manifest(root=root, studies=studies, label_columns=label_columns, meta=meta)


def _parse_row(csv_path, line, row, header, col, label_columns, seen) -> Study:
    where = f"{csv_path}, row {line}"
    if len(row) != len(header):
        raise ManifestError(f"{where}: {len(row)} fields, header has {len(header)}")
    study_id = row[col["study_id"]]
    if study_id in seen:
        raise ManifestError(f"{where}: study_id {study_id!r} repeated")
    seen.add(study_id)
    split = row[col["split"]]
    if split not in SPLITS:
        raise ManifestError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    try:
        images = json.loads(row[col["images"]])
    except json.JSONDecodeError as e:
        raise ManifestError(f"{where}: images is not a JSON list: {e}") from e
    if not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images):
        raise ManifestError(f"{where}: images must be a non-empty JSON list of paths")
    labels = {}
    for name in label_columns:
        try:
            labels[name] = parse_label(row[col[name]])
        except ValueError as e:
            raise ManifestError(f"{where}, column {name!r}: {e}") from e
    return Study(
        study_id=study_id,
        patient_id=row[col["patient_id"]],
        split=split,
        images=tuple(images),
        report=row[col["report"]],
        labels=labels,
    )


def split_counts(studies: Iterable[Study]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in studies:
        counts[s.split] = counts.get(s.split, 0) + 1
    return counts
