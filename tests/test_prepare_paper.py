"""The paper's downstream sets: each preparer on a fake release tree with the real layout
(fixtures_data/fake_releases.py) and its bad inputs, splits by patient and by seed, leakage
against another prepared set, and `evaluate --benchmark paper` end to end on all of them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pydicom", reason="the dicom extra is not installed (RSNA is DICOM)")

from convirt_fast.data import rejects as R  # noqa: E402
from convirt_fast.data.leakage import check_studies  # noqa: E402
from convirt_fast.data.manifest import load_manifest  # noqa: E402
from convirt_fast.data.rejects import read_rejects  # noqa: E402
from convirt_fast.eval.paper_benchmark import _grouping, parse_data  # noqa: E402
from convirt_fast.prepare.__main__ import main as prepare  # noqa: E402
from fixtures_data.fake_releases import (  # noqa: E402
    EIGHT,
    build_fake_chexpert,
    build_fake_covidx,
    build_fake_mura,
    build_fake_rsna,
    pixels,
    rsna_id as pid,
)

FLAGS = ["--no-progress", "--workers", "2"]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    build_fake_rsna(root / "rsna", bad=True)
    build_fake_chexpert(root / "CheXpert-v1.0-small", bad=True)
    covidx = build_fake_covidx(root / "covidx", bad=True)
    build_fake_mura(root / "MURA-v1.1", bad=True)
    return root, covidx


def _run(*args) -> int:
    return prepare([*map(str, args), *FLAGS])


def _rejects(folder) -> dict[str, str]:
    return {r.item: r.reason for r in read_rejects(folder / "rejects.csv")}


def _by_patient_ok(m) -> None:
    assert check_studies(m.studies).ok  # no patient, no image in two splits


@pytest.fixture(scope="module")
def prepared(trees, tmp_path_factory):
    root, covidx = trees
    out = tmp_path_factory.mktemp("prepared")
    assert _run("rsna", "--root", root / "rsna", "--validate-size", 6, "--test-size", 9, "--out", out / "rsna") == 0
    assert _run("chexpert", "--root", root / "CheXpert-v1.0-small", "--validate-size", 8, "--out", out / "chexpert") == 0
    assert _run("covidx", "--root", root / "covidx", "--train-list", covidx["train_list"], "--test-list",
                covidx["test_list"], "--validate-size", 8, "--out", out / "covidx") == 0
    assert _run("mura", "--root", root / "MURA-v1.1", "--validate-size", 8, "--out", out / "mura") == 0
    assert _run("chexpert-8x200", "--root", root / "CheXpert-v1.0-small", "--candidates", 3, "--queries", 1,
                "--out", out / "chexpert-8x200") == 0
    return out


def test_rsna(prepared):
    m = load_manifest(prepared / "rsna")
    meta = m.meta
    assert meta["splits"] == {"train": 25, "validate": 6, "test": 9} and meta["text"] is False
    assert meta["benchmark"]["split_paper"] == {"train": 25184, "validate": 1500, "test": 3000}
    assert m.label_columns == ("Pneumonia",)
    # one row per patient although positives have one or two box rows; Target is the label
    labels = {s.study_id: s.labels["Pneumonia"] for s in m.studies}
    assert sum(labels.values()) == 14 and len(labels) == 40  # 14 of the 40 good patients are positive
    assert all(s.images[0].endswith(".png") and s.images[0].startswith("images/stage_2_train_images/") for s in m.studies)
    with Image.open(m.root / m.studies[0].images[0]) as im:
        assert im.mode == "L" and im.size == (48, 48)
    # patient 1: a 16-bit MONOCHROME1 DICOM, inverted, kept 16-bit; 2 and 4: compressed (96 px)
    by_id = {s.study_id: s for s in m.studies}
    with Image.open(m.root / by_id[pid(1)].images[0]) as im:
        assert im.mode.startswith("I") and np.array_equal(np.asarray(im), pixels(48, 48, 1).astype(np.uint16) * 257)
    for i in (2, 4):
        with Image.open(m.root / by_id[pid(i)].images[0]) as im:
            assert im.size == (96, 96) and np.array_equal(np.asarray(im)[24:-24, 24:-24], pixels(48, 48, i))
    _by_patient_ok(m)
    assert _rejects(prepared / "rsna") == {
        "bad-label": R.BAD_VALUE, "bad-missing": R.MISSING_IMAGE, "bad-garbage": R.CORRUPT_IMAGE,
        "bad-truncated": R.CORRUPT_IMAGE, "bad-multiframe": R.MULTI_FRAME, "bad-sr": R.NOT_AN_IMAGE}


def test_rsna_split_is_seeded_and_test_labels_give_an_official_test(trees, tmp_path):
    root = trees[0] / "rsna"
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert _run("rsna", "--root", root, "--validate-size", 6, "--test-size", 9, "--seed", seed,
                    "--out", tmp_path / name) == 0
    a, b, c = ({s.study_id: s.split for s in load_manifest(tmp_path / k).studies} for k in "abc")
    assert a == b and a != c
    # a labels file for a test set of our own (stage 2 test layout): those patients are the test set
    lines = (root / "stage_2_train_labels.csv").read_text().splitlines()
    test_ids = sorted({line.split(",")[0] for line in lines[1:6]})
    (root / "test_labels.csv").write_text("\n".join([lines[0], *lines[1:6]]) + "\n")
    (root / "test_images").mkdir(exist_ok=True)
    for pid in test_ids:
        (root / "test_images" / f"{pid}.dcm").write_bytes((root / "stage_2_train_images" / f"{pid}.dcm").read_bytes())
    assert _run("rsna", "--root", root, "--validate-size", 6, "--test-labels", root / "test_labels.csv",
                "--test-images", "test_images", "--out", tmp_path / "official") == 0
    m = load_manifest(tmp_path / "official")
    assert sorted(s.study_id for s in m.studies if s.split == "test") == test_ids
    rej = _rejects(tmp_path / "official")
    assert all(rej[pid] == R.PATIENT_IN_TWO_SPLITS for pid in test_ids)  # their train rows went


def test_chexpert(prepared, trees, tmp_path):
    m = load_manifest(prepared / "chexpert")
    assert m.label_columns == ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
    # valid.csv is the test set as published (12 + the leaking patient's image); that patient left train
    assert m.meta["splits"]["validate"] == 8 and m.meta["splits"]["test"] == 13
    assert not [s for s in m.studies if s.patient_id == "patient00001" and s.split != "test"]
    assert all("frontal" in s.images[0] for s in m.studies)  # laterals filtered by default
    _by_patient_ok(m)
    mixed = next(s for s in m.studies if s.patient_id == "patient00041")  # Cardiomegaly -1.0, Consolidation blank
    assert mixed.labels["Cardiomegaly"] == 0 and mixed.labels["Consolidation"] == 0 and mixed.labels["Edema"] == 1
    rej = read_rejects(prepared / "chexpert" / "rejects.csv")
    reasons = {(r.reason, r.item) for r in rej}
    assert (R.MISSING_IMAGE, "train/patient90001/study1/view1_frontal") in reasons
    assert (R.BAD_VALUE, "train/patient90002/study1/view1_frontal.jpg") in reasons  # Edema "2.0"
    assert (R.PATIENT_IN_TWO_SPLITS, "train/patient00001/study1/view1_frontal") in reasons
    assert sum(r.reason == R.VIEW_FILTERED for r in rej) == 16
    # U-ones and all views
    root = trees[0] / "CheXpert-v1.0-small"
    assert _run("chexpert", "--root", root, "--validate-size", 8, "--uncertain", "ones", "--views", "all",
                "--out", tmp_path / "u1") == 0
    u1 = load_manifest(tmp_path / "u1")
    assert next(s for s in u1.studies if s.study_id == mixed.study_id).labels["Cardiomegaly"] == 1
    assert sum("lateral" in s.images[0] for s in u1.studies) == 15  # 16, less patient00001's (it leaked)


def test_covidx(prepared):
    m = load_manifest(prepared / "covidx")
    assert m.label_columns == ("normal", "pneumonia", "COVID-19")
    assert all(sum(v for v in s.labels.values()) == 1 for s in m.studies)  # one-hot
    assert m.meta["splits"] == {"train": 37, "validate": 8, "test": 15}
    assert {s.patient_id for s in m.studies if s.split == "test"} == {str(1000 + i // 2) for i in range(15)}
    _by_patient_ok(m)
    assert _rejects(prepared / "covidx") == {"flu.png": R.BAD_VALUE, "train/absent.png": R.MISSING_IMAGE,
                                              "train/leak.png": R.PATIENT_IN_TWO_SPLITS}


def test_mura(prepared):
    m = load_manifest(prepared / "mura")
    assert m.meta["evaluation"] == {"unit": "image", "aggregate": "study_mean"}
    assert m.meta["split_images"] == {"train": 40, "validate": 8, "test": 15}
    assert max(len(s.images) for s in m.studies) == 3  # one row per study, all its images
    _by_patient_ok(m)
    rgb = next(s for s in m.studies if len(s.images) == 3)
    with Image.open(m.root / rgb.images[2]) as im:
        assert im.mode == "L"  # the release's RGB PNGs become grayscale
    assert _rejects(prepared / "mura") == {
        "train/XR_HAND/patient09001/study1_positive": R.BAD_VALUE,
        "train/XR_HAND/patient09001/study1_positive/image1.png": R.NO_SPLIT,
        "train/XR_HAND/patient09002/study1_negative": R.MISSING_IMAGE,
        "train/XR_HAND/patient11185/study1_negative": R.PATIENT_IN_TWO_SPLITS}


def test_chexpert_8x200(prepared, trees, tmp_path):
    folder = prepared / "chexpert-8x200"
    m = load_manifest(folder)
    assert m.meta["splits"] == {"retrieval": 32}
    rows = (folder / "retrieval_images.csv").read_text().splitlines()[1:]
    roles = [r.split(",")[-1] for r in rows]
    assert roles.count("candidate") == 24 and roles.count("query") == 8
    by_id = {s.study_id: s for s in m.studies}
    patients = {}
    for r in rows:
        study_id, _, category, role = r.split(",")
        s = by_id[study_id]
        assert [c for c in EIGHT if s.labels[c] == 1] == [category]  # exclusively positive
        patients.setdefault(role, set()).add(s.patient_id)
    assert not patients["candidate"] & patients["query"]
    assert len((folder / "text_queries.csv").read_text().splitlines()) == 41  # built-in 5 x 8
    # the same seed gives the same set; a CSV of text queries of our own is used as given
    queries = tmp_path / "q.csv"
    queries.write_text("category,text\nEdema,Pulmonary edema is seen.\n")
    root = trees[0] / "CheXpert-v1.0-small"
    assert _run("chexpert-8x200", "--root", root, "--candidates", 3, "--queries", 1, "--text-queries", queries,
                "--out", tmp_path / "again") == 0
    assert (tmp_path / "again" / "retrieval_images.csv").read_text().splitlines()[1:] == rows
    assert (tmp_path / "again" / "text_queries.csv").read_text().splitlines()[1:] == ["Edema,Pulmonary edema is seen."]
    assert _run("chexpert-8x200", "--root", root, "--candidates", 5, "--out", tmp_path / "short") == 2


def test_errors_name_the_file(trees, tmp_path, capsys):
    root = trees[0]
    bad = tmp_path / "rsna"
    bad.mkdir()
    (bad / "stage_2_train_labels.csv").write_text("patientId,Target\nx,1\n")
    assert _run("rsna", "--root", bad, "--out", tmp_path / "o") == 2
    assert "stage_2_train_labels.csv: missing columns: x, y, width, height" in capsys.readouterr().err
    assert _run("mura", "--root", tmp_path / "nowhere", "--out", tmp_path / "o") == 2
    assert "nowhere: MURA root folder not found" in capsys.readouterr().err
    assert _run("rsna", "--root", root / "rsna", "--test-size", 100, "--out", tmp_path / "o") == 2
    assert "holding out 100 for test would leave none" in capsys.readouterr().err


def test_leakage_check_against_another_set(prepared):
    # the retrieval set is drawn from CheXpert's train images: `check` finds them
    assert prepare(["check", "--train", str(prepared / "chexpert"), "--eval", str(prepared / "chexpert-8x200")]) == 1
    assert prepare(["check", "--train", str(prepared / "chexpert"), "--eval", str(prepared / "rsna")]) == 0


def test_a_folder_of_another_task_is_refused(prepared):
    from convirt_fast.eval.paper_benchmark import _load

    manifest, why = _load("mura", prepared / "rsna")
    assert manifest is None and "prepared by `prepare rsna`, not `prepare mura`" in why
    manifest, why = _load("rsna", prepared / "nothing")
    assert manifest is None and "does not exist" in why


def test_grouping_and_data_parsing():
    index, y = _grouping(["b", "b", "a", "c", "a"], np.array([[1.0], [1.0], [0.0], [1.0], [0.0]]))
    assert index.tolist() == [0, 0, 1, 2, 1] and y[:, 0].tolist() == [1.0, 0.0, 1.0]
    assert set(parse_data("rsna=a,chexpert8x200=b")) == {"rsna", "chexpert-8x200"}
    with pytest.raises(ValueError, match="'imagenet=x'"):
        parse_data("imagenet=x")


def test_benchmark_paper_end_to_end(prepared, tmp_path, capsys):
    from convirt_fast.evaluate import main

    out = tmp_path / "report"
    data = ",".join(f"{k}={prepared / k}" for k in ("rsna", "chexpert", "covidx", "mura", "chexpert-8x200"))
    code = main(["--init", "random", "--arch", "resnet18", "--benchmark", "paper", "--data",
                 data.replace(str(prepared / "covidx"), str(tmp_path / "no-covidx")),
                 "--seeds", "2", "--finetune-seeds", "1", "--finetune-epochs", "1", "--finetune-max-steps", "1",
                 "--finetune-warmup-steps", "0", "--batch-size", "16", "--workers", "0", "--image-size", "32",
                 "--out", str(out)])
    assert code == 0
    assert "covidx: skipped" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    bench = results["paper"]
    assert set(bench["tasks"]) == {"rsna", "chexpert", "mura", "chexpert-8x200"} and "covidx" in bench["skipped"]
    name = results["encoders"][0]["name"]
    for key, fractions in (("rsna", ["1%", "10%", "100%"]), ("chexpert", ["1%", "10%", "100%"]),
                           ("mura", ["1%", "10%", "100%"])):
        r = bench["tasks"][key]["encoders"][name]
        assert list(r["linear"]) == fractions == list(r["finetune"])
        assert all(len(v["runs"]) == 2 for v in r["linear"].values())
        assert all(len(v["runs"]) == 1 for v in r["finetune"].values())
    assert bench["tasks"]["rsna"]["finetune_lr"] == 1e-4
    # MURA: the probe is scored over the 8 test studies, from 15 test images
    assert bench["tasks"]["mura"]["task"]["test"] == 15
    assert bench["tasks"]["mura"]["aggregate"] == {"linear": "study", "finetune": "study"}
    assert bench["tasks"]["chexpert-8x200"]["candidates"] == 24
    report = (out / "report.md").read_text()
    assert "| init | RSNA 1% | RSNA 10% | RSNA 100% | CheXpert 1% |" in report and "COVIDx 10% | COVIDx 100%" in report
    assert "| ConVIRT (paper) | 90.7 | 91.7 | 92.1 | 85.9 |" in report  # the paper's Table 1 row
    assert "| ConVIRT (paper) | 45.0 | 42.9 | 35.7 | 60.0 | 57.5 | 48.8 |" in report
    assert f"| **{name}** |" in report and "- covidx: skipped" in report


def test_benchmark_paper_covidx_protocol(prepared, tmp_path):
    from convirt_fast.evaluate import main

    out = tmp_path / "report"
    assert main(["--init", "random", "--arch", "resnet18", "--benchmark", "paper", "--data",
                 f"covidx={prepared / 'covidx'}", "--seeds", "1", "--finetune-epochs", "1", "--finetune-max-steps", "1",
                 "--finetune-warmup-steps", "0", "--batch-size", "16", "--workers", "0", "--image-size", "32",
                 "--out", str(out)]) == 0
    task = json.loads((out / "results.json").read_text())["paper"]["tasks"]["covidx"]
    assert task["finetune_lr"] == 1e-3 and task["fractions"] == ["10%", "100%"]
    assert task["task"]["kind"] == "multi-class"
    run = next(iter(task["encoders"].values()))
    assert run["linear"]["100%"]["metric"] == "accuracy"


def test_study_scorer_averages_each_studys_images():
    """MURA's rule: a study's probability is the mean of its images' probabilities. Per image, the
    ranking below is imperfect (AUC 0.75); per study it is perfect."""
    from types import SimpleNamespace

    from convirt_fast.eval.paper_benchmark import study_scorer

    groups = ["a", "a", "b", "c", "c"]  # image rows 0-4 of studies a (abnormal), b, c (normal)
    labels = {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0, 4: 0.0}
    task = SimpleNamespace(kind="multi-label", labels=["abnormal"],
                           y=lambda rows: np.array([[labels[r]] for r in rows]))
    logits = np.array([[3.0], [-1.0], [-2.0], [0.0], [-3.0]])  # image 1 ranks below image 3
    per_study = study_scorer(task, groups)([0, 1, 2, 3, 4], logits)
    assert per_study["value"] == 1.0
    from convirt_fast.eval.metrics import classification_metrics

    per_image = classification_metrics("multi-label", logits, task.y([0, 1, 2, 3, 4]), ["abnormal"])
    assert per_image["value"] == pytest.approx(5 / 6)


def test_release_tables_give_each_records_start_line(tmp_path):
    """A quoted field with newlines (a comment column, say) must not shift the lines that the
    preparers' rejects.csv entries point at."""
    from convirt_fast.prepare.downstream import read_table

    table = tmp_path / "labels.csv"
    table.write_text('patientId,Target,note\np1,0,"two\nlines"\np2,1,plain\n\np3,x,"a\nb\nc"\np4,0,\n')
    rows = read_table(table, required=("patientId", "Target"))
    lines = table.read_text().splitlines()
    assert [(line, row["patientId"]) for line, row in rows] == [(2, "p1"), (4, "p2"), (6, "p3"), (9, "p4")]
    assert all(lines[line - 1].startswith(row["patientId"] + ",") for line, row in rows)
