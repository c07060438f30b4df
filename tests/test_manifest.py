"""The manifest: round trip, the typed loader's refusals, labels, hash, leakage checks, resize."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from convirt_fast.data.leakage import LeakageError, assert_no_leakage, check_studies
from convirt_fast.data.manifest import (
    CORE_COLUMNS,
    ManifestError,
    Study,
    load_manifest,
    parse_label,
    write_manifest_csv,
    write_meta,
)
from convirt_fast.data.resize import ResizeTask, decode_resized, resize_one, target_size
from fixtures_data.fake_mimic import big_jpeg_bytes, jpeg_bytes

LABELS = ("Edema", "No Finding")


def _studies():
    return [
        Study("s1", "p1", "train", ("images/a.jpg", "images/b.jpg"), 'FINDINGS: A "quoted",\nmulti-line report.', {"Edema": 1, "No Finding": None}),
        Study("s2", "p2", "validate", ("images/c.jpg",), "IMPRESSION: Normal study here.", {"Edema": -1, "No Finding": 0}),
        Study("s3", "p3", "test", ("images/d.jpg",), "Ünïcödé report text ok.", {"Edema": 0, "No Finding": 1}),
    ]


def _write(tmp_path, studies=None):
    sha = write_manifest_csv(tmp_path / "manifest.csv", studies or _studies(), LABELS)
    write_meta(tmp_path / "manifest.json", {"format": "convirt_fast.manifest/1", "label_columns": list(LABELS), "manifest_sha256": sha})
    return tmp_path


def test_round_trip(tmp_path):
    m = load_manifest(_write(tmp_path))
    assert m.studies == _studies()
    assert m.label_columns == LABELS
    assert m.split_indices("train") == [0]
    assert m.image_paths(0) == [tmp_path / "images/a.jpg", tmp_path / "images/b.jpg"]
    labels = m.label_matrix()
    assert labels.shape == (3, 2) and labels[0, 0] == 1 and math.isnan(labels[0, 1]) and labels[1, 0] == -1
    # A manifest.csv path works as well as its folder.
    assert load_manifest(tmp_path / "manifest.csv").studies == m.studies


def test_missing_columns_are_all_named(tmp_path):
    _write(tmp_path)
    rows = list(csv.reader(open(tmp_path / "manifest.csv", encoding="utf-8", newline="")))
    keep = [i for i, c in enumerate(rows[0]) if c not in ("patient_id", "report", "Edema")]
    with open(tmp_path / "manifest.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([[r[i] for i in keep] for r in rows])
    with pytest.raises(ManifestError, match=r"manifest.csv: missing columns: patient_id, report, Edema"):
        load_manifest(tmp_path, verify_hash=False)


def test_hash_mismatch_is_refused(tmp_path):
    _write(tmp_path)
    text = (tmp_path / "manifest.csv").read_text(encoding="utf-8")
    (tmp_path / "manifest.csv").write_text(text.replace("p2", "p9"), encoding="utf-8")  # newlines change too
    with pytest.raises(ManifestError, match="the file changed"):
        load_manifest(tmp_path)
    assert load_manifest(tmp_path, verify_hash=False).studies[1].patient_id == "p9"


@pytest.mark.parametrize(
    "mutate,message,row",
    [
        (lambda r: r.__setitem__(3, "[]"), "non-empty JSON list", 2),
        (lambda r: r.__setitem__(3, "images/a.jpg"), "not a JSON list", 2),
        (lambda r: r.__setitem__(2, "holdout"), "split 'holdout'", 2),
        (lambda r: r.__setitem__(5, "2"), "column 'Edema'", 2),
        (lambda r: r.__setitem__(0, "s2"), "study_id 's2' repeated", 3),  # found at the second s2
    ],
)
def test_bad_rows_are_refused_with_their_row(tmp_path, mutate, message, row):
    """Rows are CSV records counted as in a spreadsheet: the header is row 1."""
    _write(tmp_path)
    rows = list(csv.reader(open(tmp_path / "manifest.csv", encoding="utf-8", newline="")))
    mutate(rows[1])
    with open(tmp_path / "manifest.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(ManifestError, match=message) as e:
        load_manifest(tmp_path, verify_hash=False)
    assert f"row {row}" in str(e.value)


def test_unfinished_or_absent_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no manifest here"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("")
    with pytest.raises(ManifestError, match="empty file"):
        load_manifest(tmp_path)


def test_manifest_without_meta_takes_extra_columns_as_labels(tmp_path):
    write_manifest_csv(tmp_path / "manifest.csv", _studies(), LABELS)
    m = load_manifest(tmp_path)
    assert m.label_columns == LABELS and m.meta == {}
    assert set(CORE_COLUMNS).isdisjoint(m.label_columns)


def test_parse_label():
    assert [parse_label(v) for v in ("1", "1.0", "0.0", "-1.0", "", " ", "nan")] == [1, 1, 0, -1, None, None, None]
    for bad in ("2", "yes", "0.5"):
        with pytest.raises(ValueError):
            parse_label(bad)


def test_leakage_within_a_manifest():
    studies = _studies()
    assert check_studies(studies).ok
    leak_patient = [*studies, Study("s4", "p1", "test", ("images/e.jpg",), "x", {})]
    with pytest.raises(LeakageError, match="p1 in test, train"):
        assert_no_leakage(leak_patient)
    leak_image = [*studies, Study("s5", "p5", "validate", ("images/a.jpg",), "x", {})]
    report = check_studies(leak_image)
    assert not report.ok and "images/a.jpg" in report.shared_images
    # The same patient twice in one split is fine.
    assert check_studies([*studies, Study("s6", "p1", "train", ("images/f.jpg",), "x", {})]).ok


def test_target_size_never_upscales():
    assert target_size(3000, 2500) == (256, 213)
    assert target_size(2500, 3000) == (213, 256)
    assert target_size(200, 100) == (200, 100)


def test_large_jpeg_is_decoded_with_dct_scaling(tmp_path, monkeypatch):
    """A 2500 x 3000 JPEG asks libjpeg for a reduced decode (draft) and comes out at 256."""
    from PIL import JpegImagePlugin

    src = tmp_path / "big.jpg"
    src.write_bytes(big_jpeg_bytes())
    calls = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        out = real(self, mode, size)
        calls.append((mode, size, self.size))
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    img = decode_resized(src)
    assert img.size == (213, 256) and img.mode == "L"
    (mode, requested, decoded) = calls[0]
    assert mode == "L" and requested == (213, 256)
    assert decoded[0] < 2500 / 4  # decoded at 1/8 scale, not in full
    # The DCT-scaled result matches a full decode + resize closely.
    with Image.open(src) as full:
        ref = np.asarray(full.convert("L").resize((213, 256), Image.Resampling.LANCZOS), np.float32)
    assert np.abs(np.asarray(img, np.float32) - ref).mean() < 3.0


def test_resize_one_reports_bad_files(tmp_path):
    ok = tmp_path / "ok.jpg"
    ok.write_bytes(jpeg_bytes(500, 400))
    zero = tmp_path / "zero.jpg"
    zero.write_bytes(b"")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(jpeg_bytes(500, 400)[:300])
    results = {p.name: resize_one(ResizeTask(p, tmp_path / "out" / p.name)) for p in (ok, zero, trunc, tmp_path / "nope.jpg")}
    assert results["ok.jpg"].ok and not results["ok.jpg"].skipped
    assert (results["zero.jpg"].reason, results["trunc.jpg"].reason, results["nope.jpg"].reason) == (
        "empty_file", "corrupt_image", "missing_image"
    )  # fmt: skip
    assert not (tmp_path / "out" / "trunc.jpg").exists()  # nothing half-written is left
    assert resize_one(ResizeTask(ok, tmp_path / "out" / "ok.jpg")).skipped


def test_meta_is_json(tmp_path):
    _write(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["label_columns"] == list(LABELS)


def test_resize_one_never_decodes_a_large_jpeg_in_full(tmp_path, monkeypatch):
    from PIL import ImageFile

    src = tmp_path / "big.jpg"
    src.write_bytes(big_jpeg_bytes())
    loaded = []
    real = ImageFile.ImageFile.load

    def spy(self):
        loaded.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    result = resize_one(ResizeTask(src, tmp_path / "out" / "big.jpg"))
    assert result.ok and loaded
    assert all(max(size) <= 3000 // 4 for size in loaded), loaded
