"""Tiny copies of the paper's downstream releases, with their real layouts, file names, column
headers and label encodings (see each preparer's docstring and docs/evaluation.md), and DICOMs
written with pydicom. `bad=True` adds each release's broken inputs. Images are 40-64 px.

The layouts copied (verified against the public releases, docs/evaluation.md):
- RSNA: stage_2_train_labels.csv (patientId,x,y,width,height,Target; one row per box),
  stage_2_detailed_class_info.csv, stage_2_train_images/<patientId>.dcm (8-bit MONOCHROME2).
- CheXpert-v1.0-small: train.csv / valid.csv (Path,Sex,Age,Frontal/Lateral,AP/PA,14
  observations as 1.0 / 0.0 / -1.0 / blank), train/patientNNNNN/studyN/viewN_frontal.jpg.
- COVIDx: train/, test/ and the space-separated lists "patient_id filename class source".
- MURA-v1.1: headerless {train,valid}_image_paths.csv and {train,valid}_labeled_studies.csv
  ("MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/,1"), PNG images.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

CHEXPERT_OBSERVATIONS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
]  # fmt: skip
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]
EIGHT = ["Atelectasis", "Cardiomegaly", "Edema", "Fracture", "Pleural Effusion", "Pneumonia", "Pneumothorax",
         "No Finding"]
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def pixels(h: int, w: int, seed: int, *, bits: int = 8, bright: float = 0.0) -> np.ndarray:
    """A smooth radiograph-like array with grain; `bright` shifts it (a class signal)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    top = 2**bits - 1
    base = 0.5 + 0.25 * np.sin(x / 5.0 + seed) * np.cos(y / 7.0) + bright + rng.normal(0, 0.04, (h, w))
    return (base.clip(0, 1) * top).astype(np.uint8 if bits <= 8 else np.uint16)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_jpeg(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, "JPEG", quality=92)


def write_dicom(path: Path, array: np.ndarray | None, *, bits_stored: int | None = None, monochrome1: bool = False,
                syntax: str = "explicit", rescale: tuple[float, float] | None = None,
                window: tuple[float, float] | None = None, frames: int = 1, sop_class: str = CR_IMAGE_STORAGE,
                patient_id: str = "anon") -> Path:
    """A DICOM Part 10 file. array None: no pixel data (a structured report). syntax: explicit
    (uncompressed), rle (RLE Lossless, pydicom's own encoder) or j2k (JPEG 2000 Lossless,
    needs pylibjpeg-openjpeg). frames > 1 stacks the array."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.Modality = "CR" if array is not None else "SR"
    if array is not None:
        data = np.stack([array] * frames) if frames > 1 else array
        allocated = 8 if array.dtype == np.uint8 else 16
        ds.Rows, ds.Columns = array.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
        ds.BitsAllocated = allocated
        ds.BitsStored = bits_stored or allocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        ds.PixelData = data.tobytes()
        if syntax == "rle":
            ds.compress(RLELossless, data)
        elif syntax == "j2k":
            ds.compress(JPEG2000Lossless, data)
        elif syntax != "explicit":
            raise ValueError(syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def j2k_encoder() -> bool:
    """Whether pydicom can write JPEG 2000 here (pylibjpeg-openjpeg installed)."""
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless

    return get_encoder(JPEG2000Lossless).is_available


def _csv(path: Path, header: list[str] | None, rows: list[list]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(header)
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue(), encoding="utf-8")


# --- RSNA Pneumonia Detection Challenge --------------------------------------------------------

def rsna_id(i: int) -> str:
    return f"{i:08x}-0000-4000-8000-{i:012x}"  # the release's patientIds are UUIDs


def build_fake_rsna(root: Path, *, n: int = 40, bad: bool = False, size: int = 48) -> dict:
    """n patients, every third positive (one or two boxes). Returns {"labels": {pid: target}}."""
    rows, info, labels = [], [], {}
    images = root / "stage_2_train_images"
    for i in range(n):
        pid = rsna_id(i)
        target = int(i % 3 == 0)
        labels[pid] = target
        if target:
            rows.append([pid, "264.0", "152.0", "213.0", "379.0", "1"])
            if i % 2:
                rows.append([pid, "562.0", "152.0", "256.0", "453.0", "1"])
            info.append([pid, "Lung Opacity"])
        else:
            rows.append([pid, "", "", "", "", "0"])
            info.append([pid, "Normal" if i % 2 else "No Lung Opacity / Not Normal"])
        array = pixels(size, size, i, bright=0.15 * target)
        if i == 1:  # 16-bit MONOCHROME1, as many CR/DX files from hospitals
            write_dicom(images / f"{pid}.dcm", 65535 - array.astype(np.uint16) * 257, monochrome1=True,
                        patient_id=pid)
        elif i in (2, 4):  # compressed: RLE (pydicom's own codec), JPEG 2000 when an encoder is installed
            syntax = "rle" if i == 2 or not j2k_encoder() else "j2k"
            write_dicom(images / f"{pid}.dcm", np.pad(array, 24, mode="edge"), syntax=syntax, patient_id=pid)
        else:
            write_dicom(images / f"{pid}.dcm", array, patient_id=pid)
    if bad:
        extra = {
            "bad-missing": None, "bad-garbage": b"not a dicom file at all" * 10, "bad-truncated": "truncated",
            "bad-label": "label", "bad-multiframe": "frames", "bad-sr": "sr",
        }
        for pid, kind in extra.items():
            rows.append([pid, "", "", "", "", "2" if kind == "label" else "0"])
            path = images / f"{pid}.dcm"
            if isinstance(kind, bytes):
                path.write_bytes(kind)
            elif kind == "truncated":
                write_dicom(path, pixels(size, size, 99))
                data = path.read_bytes()
                path.write_bytes(data[: len(data) - size * size // 2])
            elif kind == "frames":
                write_dicom(path, pixels(size, size, 98), frames=3)
            elif kind == "sr":
                write_dicom(path, None, sop_class=BASIC_TEXT_SR)
            elif kind == "label":
                write_dicom(path, pixels(size, size, 97))
    _csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], rows)
    _csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"], info)
    return {"labels": labels}


# --- CheXpert -------------------------------------------------------------------------------

def _chexpert_row(path: str, frontal: bool, values: dict[str, str]) -> list:
    return [path, "Female", "68", "Frontal" if frontal else "Lateral", "AP" if frontal else ""] + [
        values.get(c, "") for c in CHEXPERT_OBSERVATIONS]


def build_fake_chexpert(root: Path, *, train_patients: int = 48, valid_patients: int = 12, bad: bool = False,
                        size: int = 48) -> dict:
    """root is the release folder (named like CheXpert-v1.0-small). Train patient i: one study,
    a frontal image exclusively positive for EIGHT[i % 8] (patients >= 40: mixed, with uncertain
    values), every third one a lateral too. Valid: 1.0 / 0.0 only."""
    prefix = root.name
    train, valid = [], []
    for i in range(train_patients):
        patient = f"patient{i + 1:05d}"
        if i < 40:
            category = EIGHT[i % 8]
            values = {c: "0.0" for c in ("Lung Opacity", "Support Devices")}
            values.update({c: ("1.0" if c == category else "0.0" if j % 2 else "") for j, c in enumerate(EIGHT)})
            if category != "No Finding":
                values["Consolidation"] = "1.0" if i % 5 == 0 else "0.0"
        else:
            values = {"Edema": "1.0", "Cardiomegaly": "-1.0", "Atelectasis": "1.0", "Pleural Effusion": "-1.0",
                      "Consolidation": ""}
        for view, frontal in (("view1_frontal", True), ("view2_lateral", False)):
            if not frontal and i % 3:
                continue
            rel = f"train/{patient}/study1/{view}.jpg"
            bright = 0.15 if values.get("Cardiomegaly") == "1.0" or values.get("Edema") == "1.0" else 0.0
            write_jpeg(root / rel, pixels(size, size, i * 2 + frontal, bright=bright))
            train.append(_chexpert_row(f"{prefix}/{rel}", frontal, values))
    for i in range(valid_patients):
        patient = f"patient{64541 + i:05d}"
        values = {c: ("1.0" if (i + j) % 3 == 0 else "0.0") for j, c in enumerate(CHEXPERT_OBSERVATIONS)}
        rel = f"valid/{patient}/study1/view1_frontal.jpg"
        write_jpeg(root / rel, pixels(size, size, 500 + i))
        valid.append(_chexpert_row(f"{prefix}/{rel}", True, values))
    if bad:
        train.append(_chexpert_row(f"{prefix}/train/patient90001/study1/view1_frontal.jpg", True, {"Edema": "1.0"}))
        write_jpeg(root / "train/patient90002/study1/view1_frontal.jpg", pixels(size, size, 900))
        train.append(_chexpert_row(f"{prefix}/train/patient90002/study1/view1_frontal.jpg", True, {"Edema": "2.0"}))
        # patient00001 of train appears in valid as well
        write_jpeg(root / "valid/patient00001/study2/view1_frontal.jpg", pixels(size, size, 901))
        valid.append(_chexpert_row(f"{prefix}/valid/patient00001/study2/view1_frontal.jpg", True, {"Edema": "1.0"}))
    _csv(root / "train.csv", CHEXPERT_HEADER, train)
    _csv(root / "valid.csv", CHEXPERT_HEADER, valid)
    return {"train_rows": len(train), "valid_rows": len(valid)}


# --- COVIDx ----------------------------------------------------------------------------------

COVIDX_CLASSES = ("normal", "pneumonia", "COVID-19")


def build_fake_covidx(root: Path, *, train: int = 45, test: int = 15, bad: bool = False, size: int = 48) -> dict:
    """train/ and test/ with PNG and JPEG images; lists train_COVIDx4.txt / test_COVIDx4.txt."""
    lines = {"train": [], "test": []}
    sources = ("rsna", "cohen", "actmed")
    for split, n, offset in (("train", train, 0), ("test", test, 1000)):
        for i in range(n):
            cls = COVIDX_CLASSES[i % 3]
            patient = f"{offset + i // 2}"  # two images per patient
            name = f"{split}-{i}.png" if i % 2 else f"{split}-{i}.jpg"
            array = pixels(size, size, offset + i, bright=0.12 * (i % 3))
            (write_png if name.endswith(".png") else write_jpeg)(root / split / name, array)
            lines[split].append(f"{patient} {name} {cls} {sources[i % 3]}")
    if bad:
        write_png(root / "train" / "flu.png", pixels(size, size, 7))
        lines["train"].append("777 flu.png influenza cohen")
        lines["train"].append("778 absent.png normal rsna")
        write_png(root / "train" / "leak.png", pixels(size, size, 8))
        lines["train"].append("1000 leak.png normal rsna")  # patient 1000 is in test
    for split in ("train", "test"):
        (root / f"{split}_COVIDx4.txt").write_text("\n".join(lines[split]) + "\n", encoding="utf-8")
    return {"train_list": root / "train_COVIDx4.txt", "test_list": root / "test_COVIDx4.txt"}


# --- MURA ------------------------------------------------------------------------------------

def build_fake_mura(root: Path, *, train_patients: int = 24, valid_patients: int = 8, bad: bool = False,
                    size: int = 48) -> dict:
    """root is the MURA-v1.1 folder. Patient i: one study (XR_WRIST or XR_ELBOW) of 1-3 images,
    abnormal when i % 2; some images RGB as in the release."""
    prefix = root.name
    out = {"train": ([], []), "valid": ([], [])}
    for part, n, offset in (("train", train_patients, 1), ("valid", valid_patients, 11185)):
        paths, studies = out[part]
        for i in range(n):
            abnormal = i % 2
            body = "XR_WRIST" if i % 3 else "XR_ELBOW"
            study = f"{part}/{body}/patient{offset + i:05d}/study1_{'positive' if abnormal else 'negative'}"
            studies.append([f"{prefix}/{study}/", abnormal])
            for k in range(1 + i % 3):
                array = pixels(size, size + 8, offset * 10 + i * 3 + k, bright=0.15 * abnormal)
                if k == 2:
                    array = np.stack([array] * 3, axis=-1)  # RGB, as some MURA PNGs are
                write_png(root / study / f"image{k + 1}.png", array)
                paths.append([f"{prefix}/{study}/image{k + 1}.png"])
    if bad:
        paths, studies = out["train"]
        studies.append([f"{prefix}/train/XR_HAND/patient09001/study1_positive/", 2])  # unknown label
        write_png(root / "train/XR_HAND/patient09001/study1_positive/image1.png", pixels(size, size, 3))
        paths.append([f"{prefix}/train/XR_HAND/patient09001/study1_positive/image1.png"])
        studies.append([f"{prefix}/train/XR_HAND/patient09002/study1_negative/", 0])  # its image is missing
        paths.append([f"{prefix}/train/XR_HAND/patient09002/study1_negative/image1.png"])
        # patient11185 of valid has a train study too
        studies.append([f"{prefix}/train/XR_HAND/patient11185/study1_negative/", 0])
        write_png(root / "train/XR_HAND/patient11185/study1_negative/image1.png", pixels(size, size, 4))
        paths.append([f"{prefix}/train/XR_HAND/patient11185/study1_negative/image1.png"])
    for part, (paths, studies) in out.items():
        _csv(root / f"{part}_image_paths.csv", None, paths)
        _csv(root / f"{part}_labeled_studies.csv", None, studies)
    return {part: len(paths) for part, (paths, _) in out.items()}
