"""`prepare csv`: a user's own image-report pairs, one row per study in a CSV.

Image paths are relative to `image_root` (default: the CSV's folder) or absolute; images may be
JPEG, PNG (8/16-bit) or DICOM (convirt_fast/data/dicom.py; written as PNG, `x.dcm` ->
`x.dcm.png`). Without a
split column, rows are split by patient (with every row that shares an image file with the
patient), or by image file when there is no patient column, with a seeded hash (see
splits.py). A row that cannot be used (no image value, an image that is missing, empty or
corrupt, an empty or non-UTF-8 report, a repeated row, a bad split or label value) goes to
rejects.csv with its reason, the physical line where its record starts in the CSV (quoted
multi-line reports counted), its image path, study and patient ids; missing columns stop the
prepare with their names.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

from convirt_fast.data import rejects as R
from convirt_fast.data.manifest import Study, parse_label
from convirt_fast.data.resize import LONG_SIDE, ResizeTask, output_suffix, resize_all
from convirt_fast.prepare.common import LineCsvReader, PrepareError, PrepareSummary, finalize
from convirt_fast.prepare.splits import SPLIT_ALIASES, group_rows, hash_split


@dataclass(frozen=True)
class CsvConfig:
    csv: Path
    image_col: str
    text_col: str
    patient_col: str | None = None
    split_col: str | None = None
    label_cols: tuple[str, ...] = ()
    id_col: str | None = None
    """Study id column; default: the line where the row starts in the CSV ("row<N>"; quoted
    newlines counted, as an editor shows the file)."""
    image_root: Path | None = None
    seed: int = 0
    validate_fraction: float = 0.1
    test_fraction: float = 0.1
    long_side: int = LONG_SIDE

    def __post_init__(self) -> None:
        if self.validate_fraction < 0 or self.test_fraction < 0 or self.validate_fraction + self.test_fraction >= 1:
            raise ValueError("validate and test fractions must be >= 0 and sum to less than 1")


@dataclass
class _Row:
    line: int
    study_id: str
    image: str
    text: str
    patient: str | None
    split: str | None
    labels: dict[str, int | None] = field(default_factory=dict)

    def origin(self, source: str) -> R.Origin:
        return R.Origin(source, self.line, self.image, self.study_id, self.patient or "")


def _read_rows(cfg: CsvConfig, rejects: R.RejectLog) -> list[_Row]:
    path = Path(cfg.csv)
    if not path.is_file():
        raise PrepareError(f"{path}: CSV not found")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    # surrogateescape keeps undecodable bytes as lone surrogates: the rows holding them are
    # rejected one by one instead of the whole file failing.
    text = raw.decode("utf-8", errors="surrogateescape")
    reader = LineCsvReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    wanted = [cfg.image_col, cfg.text_col, cfg.patient_col, cfg.split_col, cfg.id_col, *cfg.label_cols]
    missing = [c for c in wanted if c is not None and c not in header]
    if missing:
        raise PrepareError(f"{path}: missing columns: {', '.join(missing)} (columns present: {', '.join(header)})")
    try:
        return _parse_records(cfg, path, reader, rejects)
    except csv.Error as e:  # the csv module's last resort (e.g. a field over its size limit)
        raise PrepareError(f"{path}: line {reader.line_num}: unparseable CSV: {e}") from e


def _parse_records(cfg: CsvConfig, path: Path, reader: LineCsvReader, rejects: R.RejectLog) -> list[_Row]:
    rows, seen, ids = [], set(), set()
    for line, rec in reader:
        where = f"{path.name}:{line}"
        study_id = (rec.get(cfg.id_col) or "").strip() if cfg.id_col else f"row{line}"
        patient = (rec.get(cfg.patient_col) or "").strip() if cfg.patient_col else None
        origin = R.Origin(path.name, line, (rec.get(cfg.image_col) or "").strip(), study_id, patient or "")

        def reject(reason: str, detail: str) -> None:
            rejects.add(study_id, where, reason, detail, origin)

        if None in rec or any(v is None for v in rec.values()):
            reject(R.BAD_VALUE, "row has a different number of fields than the header")
            continue
        bad = [k for k, v in rec.items() if _has_surrogate(v)]
        if bad:
            reason = R.NON_UTF8_REPORT if cfg.text_col in bad else R.BAD_VALUE
            reject(reason, f"bytes that are not UTF-8 in {', '.join(map(repr, bad))}")
            continue
        image = rec[cfg.image_col].strip()
        if not image:
            reject(R.MISSING_VALUE, f"empty {cfg.image_col!r}")
            continue
        key = tuple(rec.values())
        if key in seen:
            reject(R.DUPLICATE_ROW, "same values as an earlier row")
            continue
        seen.add(key)
        if study_id in ids or not study_id:
            reject(R.DUPLICATE_ROW if study_id else R.MISSING_VALUE, f"study id {study_id!r} empty or repeated")
            continue
        split = None
        if cfg.split_col:
            split = SPLIT_ALIASES.get(rec[cfg.split_col].strip().lower())
            if split is None:
                reject(R.BAD_VALUE, f"split {rec[cfg.split_col]!r} is not train/validate/test")
                continue
        labels = {}
        try:
            for c in cfg.label_cols:
                labels[c] = parse_label(rec[c])
        except ValueError as e:
            reject(R.BAD_VALUE, f"column {c!r}: {e}")
            continue
        if cfg.patient_col and not patient:
            reject(R.MISSING_VALUE, f"empty {cfg.patient_col!r}")
            continue
        ids.add(study_id)
        rows.append(_Row(line, study_id, image, rec[cfg.text_col], patient, split, labels))
    return rows


def _has_surrogate(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def _destination(image: str) -> str:
    """Output path (relative to the data root) for a source image path."""
    p = Path(image)
    suffix = output_suffix(p)
    # A format that changes (DICOM, TIFF -> PNG) keeps its suffix in the name: x.dcm and x.png
    # beside it must not become one file.
    name = p.name + suffix if p.suffix.lower() not in (".jpg", ".jpeg", ".png") else p.stem + suffix
    if p.is_absolute() or ".." in p.parts:
        digest = hashlib.sha1(image.encode()).hexdigest()[:12]
        return f"images/ext/{digest}/{name}"
    return str(Path("images") / p.parent / name)


def prepare_csv(out: Path, cfg: CsvConfig, *, workers: int = 0, progress: bool = True) -> PrepareSummary:
    out = Path(out)
    rejects = R.RejectLog()
    rows = _read_rows(cfg, rejects)
    root = Path(cfg.image_root) if cfg.image_root else Path(cfg.csv).resolve().parent
    sources = {r.image: (root / r.image).resolve() for r in rows}
    dests = {img: _destination(img) for img in sources}
    tasks = [ResizeTask(src, out / dests[img], item=img) for img, src in sources.items()]
    results = resize_all(tasks, long_side=cfg.long_side, workers=workers, progress=progress, desc="resize")
    failed = {r.task.item: r for r in results if not r.ok}
    kept = []
    for row in rows:
        if row.image in failed:
            res = failed[row.image]
            rejects.add(row.study_id, row.image, res.reason, res.detail, row.origin(Path(cfg.csv).name))
        else:
            kept.append(row)
    splits = _assign_splits(kept, cfg)
    studies = [
        Study(
            r.study_id,
            r.patient if r.patient is not None else f"group-{g}",
            split,
            (dests[r.image],),
            r.text,
            r.labels,
        )
        for r, (split, g) in zip(kept, splits)
    ]
    return finalize(
        out,
        studies,
        image_keys=[[str(sources[r.image])] for r in kept],
        report_files=[f"{Path(cfg.csv).name}:{r.line}" for r in kept],
        reject_origins=[r.origin(Path(cfg.csv).name) for r in kept],
        label_columns=cfg.label_cols,
        rejects=rejects,
        source=f"csv:{Path(cfg.csv).name}",
        params={k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
        images_written=sum(r.ok and not r.skipped for r in results),
        images_skipped=sum(r.skipped for r in results),
        threads=workers,
    )


def _assign_splits(rows: list[_Row], cfg: CsvConfig) -> list[tuple[str, str]]:
    """(split, group name) per row: the user's split column, else whole groups by hash."""
    keys = [[("patient", r.patient)] if r.patient is not None else [] for r in rows]
    for k, r in zip(keys, rows):
        k.append(("image", r.image))
    groups = group_rows(keys)
    out = []
    for r, g in zip(rows, groups):
        group_key = rows[g].patient if rows[g].patient is not None else rows[g].image
        split = r.split or hash_split(group_key, cfg.seed, cfg.validate_fraction, cfg.test_fraction)
        out.append((split, rows[g].study_id))
    return out
