"""`prepare check`: one prepared set against another, by patient and by image content."""

from __future__ import annotations

import shutil
import zlib

from convirt_fast.data.manifest import load_manifest
from convirt_fast.prepare.__main__ import main
from convirt_fast.prepare.check import check_prepared
from convirt_fast.prepare.mimic_cxr import MimicConfig, prepare_mimic_cxr
from convirt_fast.prepare.own_csv import CsvConfig, prepare_csv
from fixtures_data.fake_mimic import build_fake_mimic, jpeg_bytes

TEXT = "FINDINGS: The lungs are clear today.\n\nIMPRESSION: No acute process seen."


def _own(tmp_path, name, patients, image_from=None):
    """A prepared CSV set; `image_from` copies one image file in from another folder."""
    src = tmp_path / f"{name}-src"
    src.mkdir()
    rows = ["image,patient,report"]
    for i, p in enumerate(patients):
        (src / f"{i}.jpg").write_bytes(jpeg_bytes(300, 300, seed=zlib.crc32(f"{name}{i}".encode()) % 1000))
        rows.append(f'{i}.jpg,{p},"{TEXT}"')
    if image_from is not None:
        shutil.copy(image_from, src / "copied.jpg")
        rows.append(f'copied.jpg,someone-new,"{TEXT}"')
    (src / "pairs.csv").write_text("\n".join(rows) + "\n")
    cfg = CsvConfig(csv=src / "pairs.csv", image_col="image", text_col="report", patient_col="patient")
    prepare_csv(tmp_path / name, cfg, workers=1, progress=False)
    return tmp_path / name


def test_check_sets_by_patient_and_image(tmp_path, capsys):
    build_fake_mimic(tmp_path / "mimic")
    prepare_mimic_cxr(tmp_path / "train", MimicConfig(tmp_path / "mimic"), workers=1, progress=False)
    # A clean evaluation set: other patients, other pixels.
    clean = _own(tmp_path, "clean", ["e1", "e2", "e3"])
    assert check_prepared(tmp_path / "train", clean, train_splits=("train", "validate", "test")).ok
    assert main(["check", "--train", str(tmp_path / "train"), "--eval", str(clean)]) == 0
    assert "no leakage" in capsys.readouterr().out
    # A patient of the training split appears in the evaluation set.
    leaky = _own(tmp_path, "leaky", ["e1", "10000032"])
    report = check_prepared(tmp_path / "train", leaky)
    assert list(report.shared_patients) == ["10000032"]
    assert main(["check", "--train", str(tmp_path / "train"), "--eval", str(leaky)]) == 1
    assert "10000032" in capsys.readouterr().err
    # Only the chosen splits count: 10000764 is in the training set's validate split.
    other = _own(tmp_path, "other", ["10000764"])
    assert check_prepared(tmp_path / "train", other).ok
    assert not check_prepared(tmp_path / "train", other, train_splits=("validate",)).ok
    # An image of the training set, under another patient and file name: found by content.
    train = load_manifest(tmp_path / "train")
    first_train = train.image_paths(train.split_indices("train")[0])[0]
    copied = _own(tmp_path, "copied", ["e9"], image_from=first_train)
    report = check_prepared(tmp_path / "train", copied)
    assert not report.shared_patients and len(report.shared_images) == 1
    assert check_prepared(tmp_path / "train", copied, hash_images=False).ok


def test_check_one_set_alone(tmp_path):
    build_fake_mimic(tmp_path / "mimic")
    prepare_mimic_cxr(tmp_path / "train", MimicConfig(tmp_path / "mimic"), workers=1, progress=False)
    assert main(["check", "--train", str(tmp_path / "train")]) == 0


def test_check_refuses_a_missing_manifest(tmp_path, capsys):
    assert main(["check", "--train", str(tmp_path / "nothing"), "--eval", str(tmp_path)]) == 2
    assert "no manifest here" in capsys.readouterr().err
