"""`prepare mimic-cxr` on a small fake tree with the real layout and headers."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from convirt_fast.data import rejects as R
from convirt_fast.data.leakage import LeakageError
from convirt_fast.data.manifest import load_manifest
from convirt_fast.data.rejects import read_rejects
from convirt_fast.prepare.__main__ import main
from convirt_fast.prepare.common import PrepareError
from convirt_fast.prepare.mimic_cxr import MimicConfig, prepare_mimic_cxr
from convirt_fast.text import SentenceIndex
from fixtures_data.fake_mimic import build_fake_mimic


@pytest.mark.parametrize("gz,reports_zip", [(True, False), (False, True)])
def test_prepare_mimic_good_tree(tmp_path, gz, reports_zip):
    build_fake_mimic(tmp_path / "mimic", gz=gz, reports_zip=reports_zip)
    summary = prepare_mimic_cxr(tmp_path / "out", MimicConfig(tmp_path / "mimic"), workers=2, progress=False)
    m = load_manifest(tmp_path / "out")
    by_id = {s.study_id: s for s in m.studies}
    assert set(by_id) == {"50414267", "53189527", "57375967", "56699142"}
    # Official splits, subject ids as patients.
    assert {k: s.split for k, s in by_id.items()} == {
        "50414267": "train", "53189527": "train", "57375967": "validate", "56699142": "test"
    }  # fmt: skip
    assert by_id["50414267"].patient_id == "10000032"
    # Frontal views only by default: the lateral image of the first study is left out.
    assert by_id["50414267"].images == ("images/files/p10/p10000032/s50414267/d-pa-1.jpg",)
    assert by_id["53189527"].images == ("images/files/p10/p10000032/s53189527/d-ap-2.jpg",)
    # CheXpert labels: 1, 0, -1 and blank kept apart.
    labels = by_id["50414267"].labels
    assert (labels["Pleural Effusion"], labels["Cardiomegaly"], labels["Edema"], labels["Pneumonia"]) == (1, 0, -1, None)
    # Images pre-resized to 256 on the long side (300 x 360 in).
    for s in m.studies:
        for p in m.image_paths(m.studies.index(s)):
            with Image.open(p) as im:
                assert max(im.size) == 256 and im.mode == "L"
    # The sentence index holds Findings + Impression only, row i = study i.
    index = SentenceIndex.load(str(m.sentence_index_path))
    assert len(index) == len(m)
    sentences = index.sentences(0)
    assert "There is a small left pleural effusion." in sentences
    assert not any("cough" in s for s in sentences)  # the indication is not kept
    rej = read_rejects(tmp_path / "out" / "rejects.csv")
    assert {r.reason for r in rej} == {R.VIEW_FILTERED}
    assert summary.rejects == {R.VIEW_FILTERED: 2}


def test_prepare_mimic_views_all(tmp_path):
    build_fake_mimic(tmp_path / "mimic")
    prepare_mimic_cxr(tmp_path / "out", MimicConfig(tmp_path / "mimic", views=()), workers=1, progress=False)
    m = load_manifest(tmp_path / "out")
    first = next(s for s in m.studies if s.study_id == "50414267")
    assert len(first.images) == 2


def test_prepare_mimic_bad_inputs_land_in_rejects(tmp_path):
    fake = build_fake_mimic(tmp_path / "mimic", bad=True)
    summary = prepare_mimic_cxr(tmp_path / "out", MimicConfig(tmp_path / "mimic"), workers=2, progress=False)
    rej = read_rejects(tmp_path / "out" / "rejects.csv")
    reasons = {}
    for r in rej:
        reasons.setdefault(r.reason, set()).add(r.item)
    assert reasons[R.MISSING_IMAGE] == {"bad-missing-img"}
    assert reasons[R.CORRUPT_IMAGE] == {"bad-truncated", "bad-corrupt", "bad-corrupt-10"}
    assert reasons[R.EMPTY_FILE] == {"bad-zero"}
    assert {"50000001", "50000002", "50000003", "50000004"} <= reasons[R.NO_IMAGE_LEFT]
    assert reasons[R.EMPTY_REPORT] == {"50000005", "50000006"}
    assert reasons[R.NON_UTF8_REPORT] == {"50000007"}
    assert reasons[R.MISSING_REPORT] == {"50000008"}
    assert reasons[R.NO_SENTENCE] == {"50000009"}
    assert reasons[R.DUPLICATE_ROW] == {"d-pa-1"}
    # Every reject names its file.
    assert all(r.file for r in rej)
    truncated = next(r for r in rej if r.item == "bad-truncated")
    assert "truncated" in truncated.detail.lower() or "broken" in truncated.detail.lower()
    # The study with one good and one corrupt image keeps the good one.
    m = load_manifest(tmp_path / "out")
    kept = {s.study_id: s for s in m.studies}
    assert kept["50000010"].images == ("images/files/p12/p12000010/s50000010/ok-10.jpg",)
    assert set(kept) == {"50414267", "53189527", "57375967", "56699142", "50000010"}
    # The summary counts every reason.
    assert summary.rejects == {k: len([r for r in rej if r.reason == k]) for k in summary.rejects}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["rejects"] == summary.rejects
    assert fake.studies  # the tree was built


def test_prepare_mimic_rerun_skips_finished_images(tmp_path):
    build_fake_mimic(tmp_path / "mimic")
    cfg = MimicConfig(tmp_path / "mimic")
    first = prepare_mimic_cxr(tmp_path / "out", cfg, workers=1, progress=False)
    assert first.images_written == 4 and first.images_skipped == 0
    # Simulate an interruption: the manifest never written, one image half-written.
    (tmp_path / "out" / "manifest.json").unlink()
    (tmp_path / "out" / "manifest.csv").unlink()
    victim = tmp_path / "out/images/files/p11/p11000011/s56699142/d-pa-4.jpg"
    victim.write_bytes(victim.read_bytes()[:100])
    second = prepare_mimic_cxr(tmp_path / "out", cfg, workers=1, progress=False)
    assert second.images_written == 1 and second.images_skipped == 3
    assert len(load_manifest(tmp_path / "out")) == 4


def test_prepare_mimic_leakage_fails_loudly(tmp_path):
    build_fake_mimic(tmp_path / "mimic", leak=True)
    with pytest.raises(LeakageError, match="10000032"):
        prepare_mimic_cxr(tmp_path / "out", MimicConfig(tmp_path / "mimic"), workers=1, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_prepare_mimic_missing_csv_and_columns(tmp_path, capsys):
    build_fake_mimic(tmp_path / "mimic", gz=False)
    (tmp_path / "mimic" / "mimic-cxr-2.0.0-split.csv").unlink()
    with pytest.raises(PrepareError, match="mimic-cxr-2.0.0-split.csv"):
        prepare_mimic_cxr(tmp_path / "out", MimicConfig(tmp_path / "mimic"), progress=False)
    build_fake_mimic(tmp_path / "mimic2", gz=False)
    meta = tmp_path / "mimic2" / "mimic-cxr-2.0.0-metadata.csv"
    meta.write_text(meta.read_text().replace("ViewPosition", "View"))
    rc = main(["mimic-cxr", "--root", str(tmp_path / "mimic2"), "--out", str(tmp_path / "out2"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "missing columns: ViewPosition" in err and "mimic-cxr-2.0.0-metadata.csv" in err


def test_prepare_mimic_cli(tmp_path):
    build_fake_mimic(tmp_path / "mimic", reports_zip=True)
    rc = main(["mimic-cxr", "--root", str(tmp_path / "mimic"), "--out", str(tmp_path / "out"), "--views", "PA", "--no-progress"])
    assert rc == 0
    m = load_manifest(tmp_path / "out")
    assert {s.study_id for s in m.studies} == {"50414267", "57375967", "56699142"}  # the AP study left out


@pytest.mark.parametrize("gz,reports_zip", [(True, False), (False, True)])
def test_prepare_mimic_rejects_name_the_metadata_line(tmp_path, gz, reports_zip):
    """Every reject of a metadata row or a study names the metadata table and the physical line
    (of the decompressed text) where the row starts, multi-line quoted rows around it; study
    entries give the study and subject ids, the image paths and the report file."""
    import gzip

    fake = build_fake_mimic(tmp_path / "mimic", bad=True, gz=gz, reports_zip=reports_zip, multiline=True)
    prepare_mimic_cxr(tmp_path / "out", MimicConfig(tmp_path / "mimic"), workers=1, progress=False)
    rej = read_rejects(tmp_path / "out" / "rejects.csv")
    meta = tmp_path / "mimic" / ("mimic-cxr-2.0.0-metadata.csv" + (".gz" if gz else ""))
    data = meta.read_bytes()
    lines = (gzip.decompress(data) if gz else data).split(b"\n")
    assert sum(line.startswith(b"d-pa-1,") for line in lines) == 2  # the duplicate row, and rows span lines
    assert len(lines) > 2 * len(fake.studies)
    study_of = {d: st for st, v in fake.studies.items() for d in v["dicoms"]}
    # The metadata rows that each study's rejects must point at: a line that starts one of its rows.
    for r in rej:
        assert r.source == meta.name and r.line, r
        at = lines[r.line - 1]
        subject = fake.studies[r.study_id]["subject"]
        assert r.patient_id == subject
        if r.item in study_of:  # an image's entry: the line starts that image's row
            assert at.startswith(f"{r.item},{subject},{r.study_id},".encode()), (r, at)
            assert r.image == f"files/p{subject[:2]}/p{subject}/s{r.study_id}/{r.item}.jpg"
        else:  # a study's entry: its first metadata row
            assert r.item == r.study_id
            first = next(d for d in fake.studies[r.study_id]["dicoms"])
            assert at.startswith(f"{first},{subject},{r.study_id},".encode()), (r, at)
            assert r.report == ("mimic-cxr-reports.zip:" if reports_zip else "") + f"files/p{subject[:2]}/p{subject}/s{r.study_id}.txt"
        assert f"{meta.name} line {r.line}" in r.message
    by_item = {}
    for r in rej:
        by_item.setdefault(r.item, []).append(r.reason)
    # Every kind of reject is there, each pointed at its row.
    assert by_item["50000005"] == by_item["50000006"] == [R.EMPTY_REPORT]
    assert by_item["50000009"] == [R.NO_SENTENCE]
    assert by_item["50000007"] == [R.NON_UTF8_REPORT]
    assert by_item["50000008"] == [R.MISSING_REPORT]
    assert by_item["bad-missing-img"] == [R.MISSING_IMAGE]
    assert by_item["bad-truncated"] == by_item["bad-corrupt-10"] == [R.CORRUPT_IMAGE]
    assert by_item["d-pa-1"] == [R.DUPLICATE_ROW]
    assert by_item["d-lat-1"] == [R.VIEW_FILTERED]
    # A study whose images all fail the view filter has an entry of its own, by study id.
    assert by_item["lat-11"] == by_item["ll-11"] == [R.VIEW_FILTERED]
    assert by_item["50000011"] == [R.NO_IMAGE_LEFT]
    lonely = next(r for r in rej if r.item == "50000011")
    assert "lat-11" in lonely.detail and "ll-11" in lonely.detail
    # Study entries list the study's images by path.
    short = next(r for r in rej if r.item == "50000009")
    assert short.image == "files/p12/p12000009/s50000009/ok-9.jpg"
    if not reports_zip:
        assert (tmp_path / "mimic" / short.report).is_file()
    # The duplicate row is the second one, not the first.
    dup = next(r for r in rej if r.item == "d-pa-1")
    assert dup.line == max(i + 1 for i, line in enumerate(lines) if line.startswith(b"d-pa-1,"))
