"""The rejects file: everything a prepare dropped, with the reason and where to find it.

rejects.csv columns (the first four are the original format; the rest were added after them, so
readers of the old four keep working):
    item        the study id, image id or "file:line" of what was dropped
    file        the file concerned, as given in the source: the image for an image that does not
                decode, the report file for a report, else "source:line"
    reason      a short fixed code (below), counted in the summary and in manifest.json
    detail      the decoder's or parser's message
    source      the table the record comes from (a user's CSV, mimic-cxr-2.0.0-metadata.csv.gz)
    line        the physical line of `source` where the record starts, 1-based: quoted multi-line
                fields counted, a gzipped table counted in its decompressed text; lines end at
                \\n, \\r\\n or a lone \\r (Python's universal newlines). Blank when not from a table.
    image       the record's image path(s) as the source names them, ";" between several
    study_id    the study id, where the source has one
    patient_id  the patient id, where the source has one
    report      the report file, where the report is a file of its own (MIMIC-CXR)
    message     one sentence for a person: what was dropped, where it is, why

Bytes that were not UTF-8 in the source are written as \\xNN escapes.
"""

from __future__ import annotations

import csv
import threading
from collections import Counter
from dataclasses import asdict, astuple, dataclass, fields
from pathlib import Path

from convirt_fast.io import atomic_write

# Reason codes: stable strings, tests and users grep for them.
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"
EMPTY_FILE = "empty_file"
MISSING_REPORT = "missing_report"
EMPTY_REPORT = "empty_report"
NON_UTF8_REPORT = "non_utf8_report"
NO_SENTENCE = "no_sentence"  # no sentence of >= 3 tokens after section extraction (paper)
DUPLICATE_ROW = "duplicate_row"
MISSING_VALUE = "missing_value"
BAD_VALUE = "bad_value"
VIEW_FILTERED = "view_filtered"
NO_IMAGE_LEFT = "no_image_left"
NO_SPLIT = "no_split"
# DICOM (convirt_fast/data/dicom.py): no pixel data (a report, a presentation state), several
# frames, or what cannot be decoded here (colour, a transfer syntax without its decoder).
NOT_AN_IMAGE = "not_an_image"
MULTI_FRAME = "multi_frame"
UNSUPPORTED_DICOM = "unsupported_dicom"
# An official release listing one patient in two of its splits: the patient's training rows go.
PATIENT_IN_TWO_SPLITS = "patient_in_two_splits"

# What each reason means, for the `message` column.
REASON_TEXT = {
    MISSING_IMAGE: "the image file does not exist",
    CORRUPT_IMAGE: "the image file does not decode",
    EMPTY_FILE: "the image file is empty (0 bytes)",
    MISSING_REPORT: "there is no report for the study",
    EMPTY_REPORT: "the report is empty",
    NON_UTF8_REPORT: "the report holds bytes that are not UTF-8 text",
    NO_SENTENCE: "the report has no sentence of 3 or more tokens (in Findings/Impression when it has them)",
    DUPLICATE_ROW: "the record repeats an earlier one",
    MISSING_VALUE: "a required value is empty",
    BAD_VALUE: "a value cannot be used",
    VIEW_FILTERED: "the image's view is not one of the accepted views",
    NO_IMAGE_LEFT: "the study has no usable image left",
    NO_SPLIT: "the image is in no split",
    NOT_AN_IMAGE: "the DICOM file holds no pixel data",
    MULTI_FRAME: "the DICOM file holds several frames",
    UNSUPPORTED_DICOM: "the DICOM file cannot be decoded here",
    PATIENT_IN_TWO_SPLITS: "the patient is listed in two splits of the release",
}


@dataclass(frozen=True)
class Origin:
    """Where a record comes from: what a person needs to find it and fix it."""

    source: str = ""
    """The table holding the record (its file name)."""
    line: int | None = None
    """Physical line of `source` where the record starts (1-based, quoted newlines counted)."""
    image: str = ""
    """Image path(s) as the source names them, ";" between several."""
    study_id: str = ""
    patient_id: str = ""
    report: str = ""
    """The report file, where reports are files of their own."""


@dataclass(frozen=True)
class Reject:
    """One rejects.csv row: the original four columns, then Origin's fields (same names, same
    order: RejectLog.add fills them by name), then the sentence."""

    item: str
    file: str
    reason: str
    detail: str = ""
    source: str = ""
    line: int | None = None
    image: str = ""
    study_id: str = ""
    patient_id: str = ""
    report: str = ""
    message: str = ""


COLUMNS = tuple(f.name for f in fields(Reject))


def _clean(s: object) -> str:
    """Text safe to write as UTF-8: undecodable source bytes (kept as lone surrogates by the
    readers' surrogateescape) become \\xNN."""
    return str(s).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def join_images(images) -> str:
    return ";".join(str(i) for i in images)


def describe(item: str, file: str, reason: str, detail: str, origin: Origin) -> str:
    """The `message` sentence: what, where, why."""
    what = []
    if origin.study_id:
        what.append(f"study {origin.study_id}")
    if origin.patient_id:
        what.append(f"patient {origin.patient_id}")
    if origin.image:
        what.append(f"image {origin.image}")
    if not what:
        what.append(item)
    where = f"{origin.source} line {origin.line}" if origin.source and origin.line else (origin.source or file)
    if origin.report:
        where += f", report {origin.report}"
    text = f"{', '.join(what)} ({where}): dropped, {REASON_TEXT.get(reason, reason)}"
    return text + (f": {detail}" if detail else ".")


class RejectLog:
    """Thread-safe list of rejects; written once at the end of a prepare."""

    def __init__(self) -> None:
        self._items: list[Reject] = []
        self._lock = threading.Lock()

    def add(self, item: str, file: str, reason: str, detail: str = "", origin: Origin | None = None) -> None:
        """`origin`: where the record is (table, start line, image, ids); without it the entry
        has the original four columns only."""
        item, file, detail = _clean(item), _clean(file), _clean(detail)
        where = {k: v if k == "line" else _clean(v) for k, v in asdict(origin or Origin()).items()}
        r = Reject(item, file, reason, detail, **where, message=describe(item, file, reason, detail, Origin(**where)))
        with self._lock:
            self._items.append(r)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def items(self) -> list[Reject]:
        return list(self._items)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self._items).items()))

    def write(self, path: Path) -> None:
        with atomic_write(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for r in self._items:
                w.writerow(["" if v is None else v for v in astuple(r)])


def read_rejects(path: Path) -> list[Reject]:
    """The entries of a rejects.csv, old (four columns) or new."""
    with open(path, encoding="utf-8", newline="") as f:
        out = []
        for row in csv.DictReader(f):
            known = {k: v for k, v in row.items() if k in COLUMNS}
            known["line"] = int(known["line"]) if known.get("line") else None
            out.append(Reject(**known))
        return out
