"""SynthCXR: determinism, splits and labels, reports and held-out queries, each finding's
signature (measured on paired renders), the prepared folder and the cache."""

from __future__ import annotations

import copy
import csv
import os
import re

import numpy as np
import pytest

from convirt_fast.data.manifest import load_manifest
from convirt_fast.prepare.synthetic import ensure_synthcxr, synthcxr_dir
from convirt_fast.data.synthcxr import findings as F
from convirt_fast.data.synthcxr.anatomy import LEFT, RIGHT, heart_outline, sample_anatomy
from convirt_fast.data.synthcxr.dataset import SynthConfig, labels_of, plan_studies, synthesize
from convirt_fast.data.synthcxr.render import render, sample_nuisance
from convirt_fast.data.synthcxr.reports import NEGATION, TEXT_QUERIES, write_report
from convirt_fast.prepare.__main__ import main
from convirt_fast.text import SentenceIndex, extract_sections, split_sentences

S = 128  # render size for the signature tests


def test_deterministic_from_the_seed():
    cfg = SynthConfig(n=50, seed=7, size=64)
    plans = plan_studies(cfg)
    assert plans == plan_studies(cfg)
    a = synthesize(plans[3], cfg)
    b = synthesize(plans[3], cfg)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    other = synthesize(plan_studies(SynthConfig(n=50, seed=8, size=64))[3], SynthConfig(n=50, seed=8, size=64))
    assert not np.array_equal(a[0], other[0])
    # The report does not depend on whether the pixels are drawn (reruns skip them).
    assert synthesize(plans[3], cfg, image=False)[1] == a[1]
    assert a[0].shape == (64, 64) and a[0].dtype == np.uint8


def test_plan_splits_labels_and_retrieval_set():
    cfg = SynthConfig(n=1000, seed=0, size=64)
    plans = plan_studies(cfg)
    train = [p for p in plans if p.split == "train"]
    val = [p for p in plans if p.split == "validate"]
    assert len(train) + len(val) == 1000 and len(val) == 100
    counts = np.bincount([len(p.findings) for p in train], minlength=4)
    assert counts[0] > 0 and counts[2] > 0 and counts[3] > 0  # several findings per study
    for name in F.FINDINGS:
        assert sum(name in p.findings for p in train) > 100
    cands, queries = cfg.retrieval_sizes()
    assert (cands, queries) == (40, 3)
    ret = [p for p in plans if p.split == "retrieval"]
    for cat in F.CATEGORIES:
        mine = [p for p in ret if p.category == cat]
        assert sum(p.role == "candidate" for p in mine) == cands
        assert sum(p.role == "query" for p in mine) == queries
        for p in mine:  # exclusively positive
            labels = labels_of(p.findings)
            assert labels[cat] == 1 and sum(labels.values()) == 1
    assert len({p.patient_id for p in plans}) == len(plans)
    assert SynthConfig(n=100000).retrieval_sizes() == (200, 10)  # the paper's 8 x 200, 10 queries


def _sentences(report: str) -> list[str]:
    return split_sentences(extract_sections(report))


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().lower())


def test_reports_sections_negations_and_held_out_queries():
    rng = np.random.default_rng(0)
    cfg = SynthConfig(n=3000, seed=1, size=64)
    seen: set[str] = set()
    negations = 0
    for p in plan_studies(cfg)[:3000]:
        report = synthesize(p, cfg, image=False)[1]
        assert "FINDINGS: " in report and "\n\nIMPRESSION: " in report
        seen.update(_norm(s) for s in _sentences(report))
        negations += any(neg in report for bank in NEGATION.values() for neg in bank)
    assert negations > 1500
    assert "no pneumothorax." in seen and "the heart is enlarged." in seen
    words = {w for sentence in seen for w in re.findall(r"[a-z]+", sentence)}
    for cat, queries in TEXT_QUERIES.items():
        assert len(queries) == 5
        for q in queries:
            assert _norm(q) not in seen, f"text query {q!r} ({cat}) occurs in a training report"
            unseen = set(re.findall(r"[a-z]+", q.lower())) - words
            assert not unseen, f"text query {q!r} uses words no report uses: {unseen}"
    # Each query survives the index's 3-token rule.
    idx = SentenceIndex.build([q for qs in TEXT_QUERIES.values() for q in qs], sections=False)
    assert idx.empty_report_ids() == []
    # Positive sentences name their side and never contradict the negations.
    report = write_report([F.Finding(F.PNEUMOTHORAX, (LEFT,), {"collapse": 0.7})], rng)
    findings_part = report.split("FINDINGS: ")[1].split("\n\nIMPRESSION")[0]
    assert "left" in findings_part.lower()
    assert not any(neg in findings_part for neg in NEGATION[F.PNEUMOTHORAX])


# --- signatures: the same study rendered with and without one finding -------------------------


def _pair(name, seed, **params):
    rng = np.random.default_rng([seed, 1])
    a = sample_anatomy(rng)
    nz = sample_nuisance(rng)
    nz.rotation, nz.shift, nz.zoom, nz.noise, nz.heel = 0.0, (0.0, 0.0), 1.0, 0.0, 0.0
    nz.ecg = nz.central_line = nz.ng_tube = False
    nz.marker = ""
    finding = F.sample_finding(name, np.random.default_rng([seed, 2]))
    finding.params.update(params)
    with_f = render(copy.deepcopy(a), [finding], nz, np.random.default_rng(3), S).astype(np.float32)
    without = render(copy.deepcopy(a), [], nz, np.random.default_rng(3), S).astype(np.float32)
    return a, finding, with_f, without


def _box(a, x0, x1, y0, y1):
    """Pixel slice of a box in normalised coordinates."""
    return slice(int(y0 * S), int(y1 * S)), slice(int(x0 * S), int(x1 * S))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cardiomegaly_cardiothoracic_ratio(seed):
    a, f, with_f, without = _pair(F.CARDIOMEGALY, seed)
    normal_ctr = np.ptp(heart_outline(a)[:, 0]) / a.thoracic_width()
    big = copy.deepcopy(a)
    big.ctr = f.params["ctr"]
    assert normal_ctr < 0.5 < np.ptp(heart_outline(big)[:, 0]) / big.thoracic_width()
    # On the image: the lung field between the normal and the enlarged left heart border
    # turns white.
    x0, x1 = heart_outline(a)[:, 0].max(), heart_outline(big)[:, 0].max()
    hy = heart_outline(a)[:, 1].mean()
    between = _box(a, x0 + 0.01, x1 - 0.01, hy - 0.02, hy + 0.02)
    assert (with_f[between] - without[between]).mean() > 40


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_effusion_fills_the_costophrenic_angle(seed):
    a, f, with_f, without = _pair(F.EFFUSION, seed)
    side = f.sides[0]
    cp_y = a.costophrenic_y(side)
    x_lat = a.cx + side * (a.half_width - 0.05)
    angle = _box(a, min(x_lat, x_lat + side * 0.04), max(x_lat, x_lat + side * 0.04), cp_y - 0.06, cp_y - 0.01)
    assert (with_f[angle] - without[angle]).mean() > 40
    apex = _box(a, a.cx + side * 0.2 - 0.02, a.cx + side * 0.2 + 0.02, a.apex_y + 0.1, a.apex_y + 0.15)
    assert abs((with_f[apex] - without[apex]).mean()) < 3  # upper lung untouched


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pneumothorax_lucent_rim_without_markings(seed):
    from convirt_fast.data.synthcxr.canvas import Canvas, grid
    from convirt_fast.data.synthcxr.layers import draw_lungs
    from convirt_fast.data.synthcxr.signatures import FINDING_DRAW

    a, f, with_f, without = _pair(F.PNEUMOTHORAX, seed, collapse=0.6)
    side = f.sides[0]
    x = a.cx + side * (a.half_width - 0.06)
    rim = _box(a, min(x, x + side * 0.03), max(x, x + side * 0.03), a.hilum_y - 0.05, a.hilum_y + 0.05)
    assert (with_f[rim] - without[rim]).mean() < -8  # darker: air with no lung in it
    # No lung markings in the rim, markings kept in the collapsed lung (the drawing's masks).
    g = grid(S // 2)
    c = Canvas(
        S // 2, copy.deepcopy(a), g[None, :], g[:, None], draw_lungs(a, {RIGHT: 0.0, LEFT: 0.0}, S // 2),
        air_keep=np.ones((S // 2, S // 2), np.float32), extra_air=np.zeros((S // 2, S // 2), np.float32),
        add=np.zeros((S // 2, S // 2), np.float32), markings_keep=np.ones((S // 2, S // 2), np.float32),
    )  # fmt: skip
    FINDING_DRAW[F.PNEUMOTHORAX](c, f, np.random.default_rng(0))
    half = tuple(slice(r.start // 2, r.stop // 2) for r in rim)
    in_lung = c.lung[side][half] > 0.5
    assert in_lung.sum() >= 4
    assert c.markings_keep[half][in_lung].max() < 0.05 and c.extra_air[half][in_lung].min() > 0
    hx, hy = a.hilum(side)
    core = _box(a, hx + side * 0.03 - 0.01, hx + side * 0.03 + 0.01, hy - 0.01, hy + 0.01)
    assert c.markings_keep[tuple(slice(r.start // 2, r.stop // 2 + 1) for r in core)].min() == 1
    # The visceral pleural line: drawn brighter than the lung on both of its sides.
    assert c.add.max() > 0.1


def test_edema_perihilar_haze_both_sides():
    a, _, with_f, without = _pair(F.EDEMA, 0)
    for side in (RIGHT, LEFT):
        hx, hy = a.hilum(side)
        near = _box(a, hx + side * 0.04, hx + side * 0.1, hy - 0.03, hy + 0.05) if side == LEFT else _box(a, hx - 0.1, hx - 0.04, hy - 0.03, hy + 0.05)
        assert (with_f[near] - without[near]).mean() > 20
    # Peripheral apex far less affected than the hila.
    apex = _box(a, a.cx - 0.2, a.cx - 0.15, a.apex_y + 0.03, a.apex_y + 0.06)
    assert (with_f[apex] - without[apex]).mean() < 10


@pytest.mark.parametrize("lobe", ["upper", "lower"])
def test_pneumonia_lobar_consolidation(lobe):
    a, f, with_f, without = _pair(F.PNEUMONIA, 4, lobe=lobe)
    side = f.sides[0]
    y0, y1 = (a.apex_y + 0.08, a.hilum_y - 0.04) if lobe == "upper" else (a.hilum_y + 0.12, a.dome_y[side] - 0.03)
    x = a.cx + side * 0.22
    region = _box(a, x - 0.05, x + 0.05, y0, y1)
    assert (with_f[region] - without[region]).mean() > 30
    other = _box(a, a.cx - side * 0.27, a.cx - side * 0.17, y0, y1)
    other = (other[0], slice(min(other[1].start, other[1].stop), max(other[1].start, other[1].stop)))
    assert abs((with_f[other] - without[other]).mean()) < 2  # the other lung is clear


def test_atelectasis_bands_and_volume_loss():
    a, f, with_f, without = _pair(F.ATELECTASIS, 5)
    side = f.sides[0]
    diff = with_f - without
    lower = _box(a, min(a.cx, a.cx + side * 0.35), max(a.cx, a.cx + side * 0.35), a.hilum_y + 0.05, a.dome_y[side] + 0.05)
    assert diff[lower].max() > 60  # dense linear bands
    # Linear: the bright change is much wider than tall.
    ys, xs = np.nonzero(diff[lower] > 40)
    assert np.ptp(xs) > 2 * max(1, np.ptp(ys) / f.params["bands"])
    # Volume loss: the hemidiaphragm rises (lung just above the dome turns to soft tissue).
    dome = _box(a, a.cx + side * 0.18 - 0.02, a.cx + side * 0.18 + 0.02, a.dome_y[side] - 0.04, a.dome_y[side] - 0.01)
    assert diff[dome].mean() > 20


@pytest.mark.parametrize("kind", ["clavicle", "ribs"])
def test_fracture_cortical_break(kind):
    a, f, with_f, without = _pair(F.FRACTURE, 6, kind=kind)
    diff = np.abs(with_f - without)
    assert diff.max() > 25  # a visible step, not a faint change
    ys, xs = np.nonzero(diff > 10)
    side = f.sides[0]
    assert np.all((xs / S - a.cx) * side > 0)  # on the broken side only
    if kind == "clavicle":
        assert ys.max() / S < a.hilum_y  # in the upper chest
    assert 20 < len(ys) < 0.05 * S * S  # local


def test_no_finding_is_a_plain_normal_render():
    cfg = SynthConfig(n=10, seed=0, size=64)
    plan = next(p for p in plan_studies(cfg) if p.split == "retrieval" and p.category == F.NO_FINDING)
    assert plan.findings == ()
    assert labels_of(plan.findings)[F.NO_FINDING] == 1


# --- prepared folder and cache -----------------------------------------------------------------


def test_prepare_synthetic_cli_and_rerun(tmp_path):
    out = tmp_path / "syn"
    args = ["synthetic", "--n", "40", "--size", "64", "--out", str(out), "--workers", "1", "--no-progress"]
    assert main(args) == 0
    m = load_manifest(out)
    assert m.label_columns == F.CATEGORIES
    assert {s.split for s in m.studies} == {"train", "validate", "retrieval"}
    with open(out / "retrieval_images.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["study_id", "image", "category", "role"]
    assert {r["role"] for r in rows} == {"candidate", "query"} and {r["category"] for r in rows} == set(F.CATEGORIES)
    by_id = {s.study_id: s for s in m.studies}
    for r in rows:
        s = by_id[r["study_id"]]
        assert s.split == "retrieval" and s.images == (r["image"],) and s.labels[r["category"]] == 1
        assert (out / r["image"]).is_file()
    with open(out / "text_queries.csv", newline="") as f:
        queries = list(csv.DictReader(f))
    assert list(queries[0]) == ["category", "text"] and len(queries) == 40
    stamp = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.jpg")}
    victim = sorted(stamp)[5]
    victim.unlink()
    assert main(args) == 0
    assert victim.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items() if p != victim)  # others kept


def test_ensure_synthcxr_prepares_once(tmp_path, monkeypatch):
    path = ensure_synthcxr(tmp_path, n=20, seed=3, size=64, workers=1, progress=False)
    assert path == synthcxr_dir(tmp_path, SynthConfig(n=20, seed=3, size=64)) / "manifest.csv"
    assert len(load_manifest(path)) > 20

    def boom(*a, **k):
        raise AssertionError("prepared a second time")

    monkeypatch.setattr("convirt_fast.prepare.synthetic.prepare_synthetic", boom)
    assert ensure_synthcxr(tmp_path, n=20, seed=3, size=64, workers=1, progress=False) == path
    # A damaged manifest is prepared again.
    monkeypatch.undo()
    with open(path, "a") as f:
        f.write("tampered")
    assert ensure_synthcxr(tmp_path, n=20, seed=3, size=64, workers=1, progress=False) == path
    assert len(load_manifest(path)) > 20


def test_default_cache_dir_env(monkeypatch, tmp_path):
    from convirt_fast.prepare.synthetic import default_cache_dir

    monkeypatch.setenv("CONVIRT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("CONVIRT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "convirt_fast"
    assert os.fspath(default_cache_dir()).endswith("convirt_fast")


def test_prepare_synthetic_same_output_with_any_worker_count(tmp_path):
    from convirt_fast.prepare.synthetic import prepare_synthetic

    cfg = SynthConfig(n=24, seed=5, size=64)
    prepare_synthetic(tmp_path / "one", cfg, workers=1, progress=False)
    prepare_synthetic(tmp_path / "two", cfg, workers=2, progress=False)
    assert (tmp_path / "one" / "manifest.csv").read_bytes() == (tmp_path / "two" / "manifest.csv").read_bytes()
    for p in (tmp_path / "one" / "images").rglob("*.jpg"):
        assert p.read_bytes() == (tmp_path / "two" / p.relative_to(tmp_path / "one")).read_bytes()
