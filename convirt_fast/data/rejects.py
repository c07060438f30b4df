"""The rejects file: everything a prepare dropped, with the reason and the file concerned.

rejects.csv columns: item (the study id, row number or image id), file (the file concerned,
as given in the source), reason (a short fixed code, counted in the summary), detail (the
decoder's or parser's message).
"""

from __future__ import annotations

import csv
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from convirt_fast.data.atomic import atomic_write

COLUMNS = ("item", "file", "reason", "detail")

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


@dataclass(frozen=True)
class Reject:
    item: str
    file: str
    reason: str
    detail: str = ""


class RejectLog:
    """Thread-safe list of rejects; written once at the end of a prepare."""

    def __init__(self) -> None:
        self._items: list[Reject] = []
        self._lock = threading.Lock()

    def add(self, item: str, file: str, reason: str, detail: str = "") -> None:
        with self._lock:
            self._items.append(Reject(str(item), str(file), reason, detail))

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
                w.writerow([r.item, r.file, r.reason, r.detail])


def read_rejects(path: Path) -> list[Reject]:
    with open(path, encoding="utf-8", newline="") as f:
        return [Reject(**row) for row in csv.DictReader(f)]
