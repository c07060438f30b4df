"""A tiny MIMIC-CXR-JPG 2.0.0 tree with the real layout and the real column headers.

Patients 10000032 (train), 10000764 (validate), 11000011 (test), each with one or two studies
of a PA and a LATERAL image (plus an AP study), reports as files or in the reports zip, CSVs
plain or gzipped. `bad=True` adds the broken cases the prepare must reject; `multiline=True`
quotes a description with newlines in every other metadata row, so that rows and lines differ.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

METADATA_HEADER = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
]  # fmt: skip
SPLIT_HEADER = ["dicom_id", "study_id", "subject_id", "split"]
LABELS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
    "Pneumonia", "Pneumothorax", "Support Devices",
]  # fmt: skip
CHEXPERT_HEADER = ["subject_id", "study_id", *LABELS]

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 COMPARISON:  ___

 FINDINGS:
 
 There is a small left pleural effusion. The heart size is normal. No pneumothorax is seen.
 
 IMPRESSION:
 
 Small left pleural effusion.
"""


@dataclass
class FakeMimic:
    root: Path
    studies: dict[str, dict] = field(default_factory=dict)
    """study_id -> {subject, split, dicoms: {dicom_id: view}, labels}"""


def jpeg_bytes(w: int, h: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = (128 + 60 * np.sin(x / 17.0) * np.cos(y / 23.0) + rng.normal(0, 8, (h, w))).clip(0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write_csv(path: Path, header: list[str], rows: list[list], gz: bool) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _study_dir(subject: str, study: str) -> str:
    return f"files/p{subject[:2]}/p{subject}/s{study}"


def build_fake_mimic(
    root: Path,
    *,
    gz: bool = True,
    reports_zip: bool = False,
    bad: bool = False,
    size: tuple[int, int] = (300, 360),
    leak: bool = False,
    multiline: bool = False,
) -> FakeMimic:
    root.mkdir(parents=True, exist_ok=True)
    fake = FakeMimic(root)
    plan = [
        # subject, study, split, [(dicom, view)], labels
        ("10000032", "50414267", "train", [("d-pa-1", "PA"), ("d-lat-1", "LATERAL")], {"Pleural Effusion": "1.0", "Cardiomegaly": "0.0", "Edema": "-1.0"}),
        ("10000032", "53189527", "train", [("d-ap-2", "AP")], {"No Finding": "1.0"}),
        ("10000764", "57375967", "validate", [("d-pa-3", "PA"), ("d-lat-3", "LL")], {"Pneumonia": "1.0"}),
        ("11000011", "56699142", "test", [("d-pa-4", "PA")], {}),
    ]
    if bad:
        plan += [
            ("12000001", "50000001", "train", [("bad-missing-img", "PA")], {}),  # image file absent
            ("12000002", "50000002", "train", [("bad-truncated", "PA")], {}),
            ("12000003", "50000003", "train", [("bad-zero", "PA")], {}),
            ("12000004", "50000004", "train", [("bad-corrupt", "PA")], {}),
            ("12000005", "50000005", "train", [("ok-5", "PA")], {}),  # empty report
            ("12000006", "50000006", "train", [("ok-6", "PA")], {}),  # whitespace report
            ("12000007", "50000007", "train", [("ok-7", "PA")], {}),  # non-UTF-8 report
            ("12000008", "50000008", "train", [("ok-8", "PA")], {}),  # no report at all
            ("12000009", "50000009", "train", [("ok-9", "PA")], {}),  # report too short (< 3 tokens)
            ("12000010", "50000010", "train", [("ok-10", "PA"), ("bad-corrupt-10", "AP")], {}),  # one bad of two
            ("12000011", "50000011", "train", [("lat-11", "LATERAL"), ("ll-11", "LL")], {}),  # no accepted view
        ]
    if leak:
        # The same patient in validate as well: the official split never does this.
        plan.append(("10000032", "59999999", "validate", [("d-pa-leak", "PA")], {}))
    meta_rows, split_rows, chex_rows, reports = [], [], [], {}
    for i, (subject, study, split, dicoms, labels) in enumerate(plan):
        fake.studies[study] = {"subject": subject, "split": split, "dicoms": dict(dicoms), "labels": labels}
        sdir = root / _study_dir(subject, study)
        sdir.mkdir(parents=True, exist_ok=True)
        for j, (dicom, view) in enumerate(dicoms):
            described = "CHEST (PA AND LAT)"
            if multiline and len(meta_rows) % 2 == 0:
                described = f"CHEST (PA AND LAT)\nportable, row {len(meta_rows)}\r\nsee the request"
            meta_rows.append([dicom, subject, study, described, view, size[1], size[0], "21800506", "213014.531",
                              "CHEST (PA AND LAT)", "postero-anterior" if view == "PA" else "lateral", "Erect"])  # fmt: skip
            split_rows.append([dicom, study, subject, split])
            img = sdir / f"{dicom}.jpg"
            if dicom == "bad-missing-img":
                continue
            data = jpeg_bytes(*size, seed=i * 10 + j)
            if dicom == "bad-truncated":
                data = data[: len(data) // 2]
            elif dicom == "bad-zero":
                data = b""
            elif dicom.startswith("bad-corrupt"):
                data = b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 10
            img.write_bytes(data)
        chex_rows.append([subject, study] + [labels.get(c, "") for c in LABELS])
        text: bytes | None = REPORT.encode()
        if study == "50000005":
            text = b""
        elif study == "50000006":
            text = b"   \n\t  \n"
        elif study == "50000007":
            text = "FINDINGS: Caf\u00e9 au lait lungs are clear today.".encode("latin-1")
        elif study == "50000008":
            text = None
        elif study == "50000009":
            text = b"FINDINGS: Clear.\n\nIMPRESSION: Normal."
        if text is not None:
            reports[f"{_study_dir(subject, study)}.txt"] = text
    if bad:
        meta_rows.append(meta_rows[0])  # a duplicate metadata row
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv", METADATA_HEADER, meta_rows, gz)
    _write_csv(root / "mimic-cxr-2.0.0-split.csv", SPLIT_HEADER, split_rows, gz)
    _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", CHEXPERT_HEADER, chex_rows, gz)
    if reports_zip:
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as z:
            for name, data in reports.items():
                z.writestr(name, data)
    else:
        for name, data in reports.items():
            (root / name).write_bytes(data)
    return fake


def big_jpeg_bytes(w: int = 2500, h: int = 3000) -> bytes:
    """A full-size radiograph-like JPEG (smooth structure + grain), made fast: a coarse random
    field upsampled in C, not a per-pixel formula."""
    rng = np.random.default_rng(w * h)
    coarse = Image.fromarray((rng.random((24, 20)) * 200 + 30).astype(np.uint8))
    img = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), np.int16)
    grain = rng.integers(-6, 7, size=(h, w), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img + grain, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()
