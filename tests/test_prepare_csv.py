"""`prepare csv`: a user's own CSV, bad rows, splits by patient, reruns, and the real covid-cxr."""

from __future__ import annotations

import csv
import io

import pytest
from PIL import Image

from convirt_fast.data import rejects as R
from convirt_fast.data.leakage import LeakageError, check_studies
from convirt_fast.data.manifest import load_manifest
from convirt_fast.data.rejects import read_rejects
from convirt_fast.prepare.__main__ import main
from convirt_fast.prepare.common import PrepareError
from convirt_fast.prepare.own_csv import CsvConfig, prepare_csv
from convirt_fast.text import SentenceIndex
from fixtures_data.fake_mimic import jpeg_bytes

GOOD_TEXT = "FINDINGS: The heart is normal in size. The lungs are clear.\n\nIMPRESSION: No acute process."


def _png16(path, w=300, h=200):
    import numpy as np

    arr = (np.arange(w * h, dtype=np.uint32).reshape(h, w) * 7 % 65535).astype(np.uint16)
    Image.fromarray(arr).save(path)


def _write(path, header, rows, encoding="utf-8"):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))


def _tree(tmp_path, *, bad=False):
    img = tmp_path / "data" / "img"
    img.mkdir(parents=True)
    rows = []
    for i in range(12):
        (img / f"a{i}.jpg").write_bytes(jpeg_bytes(400, 320, seed=i))
        rows.append([f"img/a{i}.jpg", f"pat{i // 2}", GOOD_TEXT.replace("normal", f"normal {i}"), str(i % 2)])
    _png16(img / "sixteen.png")
    rows.append(["img/sixteen.png", "pat99", GOOD_TEXT, "1"])
    if bad:
        (img / "trunc.jpg").write_bytes(jpeg_bytes(400, 320)[:500])
        (img / "zero.jpg").write_bytes(b"")
        (img / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
        _png16(img / "big16.png", 900, 700)
        _png16(img / "small16.png", 200, 100)
        for name in ("big16.png", "small16.png"):  # truncated PNGs, one to resize, one to copy
            data = (img / name).read_bytes()
            (img / f"trunc_{name}").write_bytes(data[: len(data) * 2 // 3])
        rows += [
            ["img/missing.jpg", "pat50", GOOD_TEXT, "1"],
            ["img/trunc.jpg", "pat51", GOOD_TEXT, "1"],
            ["img/zero.jpg", "pat52", GOOD_TEXT, "0"],
            ["img/junk.png", "pat53", GOOD_TEXT, "0"],
            ["img/trunc_big16.png", "pat60", GOOD_TEXT, "0"],
            ["img/trunc_small16.png", "pat61", GOOD_TEXT, "0"],
            ["img/a0.jpg", "pat54", "", "0"],  # empty report
            ["img/a1.jpg", "pat55", "  \n\t ", "0"],  # whitespace report
            ["img/a2.jpg", "pat56", "Ok.", "0"],  # no sentence of >= 3 tokens
            rows[3],  # duplicate row
            ["", "pat57", GOOD_TEXT, "0"],  # no image value
            ["img/a3.jpg", "pat58", GOOD_TEXT, "maybe"],  # bad label
        ]
    path = tmp_path / "data" / "pairs.csv"
    _write(path, ["image", "patient", "report", "effusion"], rows)
    if bad:
        # A report with bytes that are not UTF-8, appended raw.
        path.write_bytes(path.read_bytes() + b'img/a4.jpg,pat59,"FINDINGS: Caf\xe9 lungs are clear today.",0\r\n')
    return path


def _cfg(path, **kw):
    return CsvConfig(csv=path, image_col="image", text_col="report", patient_col="patient", label_cols=("effusion",), **kw)


def test_prepare_csv_good(tmp_path):
    path = _tree(tmp_path)
    summary = prepare_csv(tmp_path / "out", _cfg(path), workers=2, progress=False)
    m = load_manifest(tmp_path / "out")
    assert len(m) == 13 and summary.rejects == {}
    assert m.label_columns == ("effusion",)
    assert {s.labels["effusion"] for s in m.studies} == {0, 1}
    # Splits are by patient: both rows of a patient in one split.
    by_patient = {}
    for s in m.studies:
        by_patient.setdefault(s.patient_id, set()).add(s.split)
    assert all(len(v) == 1 for v in by_patient.values())
    assert check_studies(m.studies).ok
    # JPEG stays JPEG at 256 px; the 16-bit PNG stays 16-bit.
    for i, s in enumerate(m.studies):
        with Image.open(m.image_paths(i)[0]) as im:
            assert max(im.size) == 256
            if s.images[0].endswith(".png"):
                assert im.mode.startswith("I")
                assert max(im.getextrema()) > 255
            else:
                assert im.mode == "L"
    assert SentenceIndex.load(str(m.sentence_index_path)).sentences(0)[0].startswith("The heart is normal")


def test_prepare_csv_split_is_seeded_and_stable(tmp_path):
    path = _tree(tmp_path)
    prepare_csv(tmp_path / "a", _cfg(path, seed=3), workers=1, progress=False)
    prepare_csv(tmp_path / "b", _cfg(path, seed=3), workers=1, progress=False)
    prepare_csv(tmp_path / "c", _cfg(path, seed=4, validate_fraction=0.3, test_fraction=0.3), workers=1, progress=False)
    a, b, c = (load_manifest(tmp_path / k) for k in "abc")
    assert [s.split for s in a.studies] == [s.split for s in b.studies]
    assert [s.split for s in a.studies] != [s.split for s in c.studies]


def test_prepare_csv_without_patient_column_keeps_shared_images_together(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    rows = []
    for i in range(30):
        (img / f"x{i}.jpg").write_bytes(jpeg_bytes(64, 64, seed=i))
        rows.append([f"img/x{i}.jpg", f"FINDINGS: Finding number {i} is clearly seen here."])
    for i in range(0, 30, 3):  # ten more rows re-using an image with other text
        rows.append([f"img/x{i}.jpg", f"FINDINGS: Another note about image {i} here."])
    path = tmp_path / "pairs.csv"
    _write(path, ["image", "text"], rows)
    cfg = CsvConfig(csv=path, image_col="image", text_col="text", validate_fraction=0.3, test_fraction=0.3)
    prepare_csv(tmp_path / "out", cfg, workers=1, progress=False)
    m = load_manifest(tmp_path / "out")
    assert len(m) == 40
    split_of_image = {}
    for s in m.studies:
        split_of_image.setdefault(s.images[0], set()).add(s.split)
    assert all(len(v) == 1 for v in split_of_image.values())
    assert len({s.split for s in m.studies}) == 3


def test_prepare_csv_bad_rows_land_in_rejects(tmp_path):
    path = _tree(tmp_path, bad=True)
    summary = prepare_csv(tmp_path / "out", _cfg(path), workers=2, progress=False)
    rej = read_rejects(tmp_path / "out" / "rejects.csv")
    got = {(r.reason, r.file) for r in rej}
    assert (R.MISSING_IMAGE, "img/missing.jpg") in got
    assert (R.CORRUPT_IMAGE, "img/trunc.jpg") in got
    assert (R.EMPTY_FILE, "img/zero.jpg") in got
    assert (R.CORRUPT_IMAGE, "img/junk.png") in got
    assert (R.CORRUPT_IMAGE, "img/trunc_big16.png") in got
    assert (R.CORRUPT_IMAGE, "img/trunc_small16.png") in got
    reasons = [r.reason for r in rej]
    assert reasons.count(R.EMPTY_REPORT) == 2
    assert reasons.count(R.NO_SENTENCE) == 1
    assert reasons.count(R.DUPLICATE_ROW) == 1
    assert reasons.count(R.MISSING_VALUE) == 1
    assert reasons.count(R.BAD_VALUE) == 1
    assert reasons.count(R.NON_UTF8_REPORT) == 1
    assert len(rej) == 13
    assert sum(summary.rejects.values()) == 13
    m = load_manifest(tmp_path / "out")
    assert len(m) == 13  # the good rows all survive


def test_prepare_csv_missing_columns_are_named(tmp_path, capsys):
    path = _tree(tmp_path)
    with pytest.raises(PrepareError, match="missing columns: notes, site"):
        prepare_csv(tmp_path / "out", CsvConfig(csv=path, image_col="image", text_col="notes", patient_col="site"), progress=False)
    rc = main(["csv", "--csv", str(path), "--image-col", "img", "--text-col", "report", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    assert "missing columns: img" in capsys.readouterr().err


def test_prepare_csv_user_split_with_leak_fails_loudly(tmp_path, capsys):
    img = tmp_path / "img"
    img.mkdir()
    (img / "a.jpg").write_bytes(jpeg_bytes(64, 64))
    (img / "b.jpg").write_bytes(jpeg_bytes(64, 64, seed=1))
    rows = [["img/a.jpg", "p1", GOOD_TEXT, "train"], ["img/b.jpg", "p1", GOOD_TEXT + " Again.", "test"]]
    path = tmp_path / "pairs.csv"
    _write(path, ["image", "patient", "report", "split"], rows)
    cfg = CsvConfig(csv=path, image_col="image", text_col="report", patient_col="patient", split_col="split")
    with pytest.raises(LeakageError, match="p1"):
        prepare_csv(tmp_path / "out", cfg, workers=1, progress=False)
    args = ["csv", "--csv", str(path), "--image-col", "image", "--text-col", "report", "--patient-col", "patient"]
    assert main([*args, "--split-col", "split", "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "leakage" in capsys.readouterr().err
    # The same image under two patients in two user splits is a leak as well.
    rows = [["img/a.jpg", "p1", GOOD_TEXT, "train"], ["img/a.jpg", "p2", GOOD_TEXT + " Again.", "validate"]]
    _write(path, ["image", "patient", "report", "split"], rows)
    with pytest.raises(LeakageError, match="images"):
        prepare_csv(tmp_path / "out2", cfg, workers=1, progress=False)


def test_prepare_csv_rerun_finishes_and_skips(tmp_path):
    path = _tree(tmp_path)
    prepare_csv(tmp_path / "out", _cfg(path), workers=1, progress=False)
    (tmp_path / "out" / "manifest.json").unlink()
    victim = next((tmp_path / "out" / "images" / "img").glob("a5.jpg"))
    victim.unlink()
    again = prepare_csv(tmp_path / "out", _cfg(path), workers=1, progress=False)
    assert again.images_written == 1 and again.images_skipped == 12
    assert len(load_manifest(tmp_path / "out")) == 13


def test_prepare_csv_covid_cxr_end_to_end(shared_data, tmp_path):
    folder = shared_data / "covid-cxr"
    if not (folder / "pairs.csv").is_file():
        pytest.skip(f"{folder}/pairs.csv not present")
    rc = main(
        ["csv", "--csv", str(folder / "pairs.csv"), "--image-col", "image", "--text-col", "notes",
         "--patient-col", "patient_id", "--out", str(tmp_path / "covid"), "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    m = load_manifest(tmp_path / "covid")
    with open(folder / "pairs.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    rej = read_rejects(tmp_path / "covid" / "rejects.csv")
    assert len(m) + len(rej) == len(rows)  # nothing lost: every row is kept or explained
    assert len(m) >= 250
    # Patients never straddle splits; the image shared by several rows stays in one split.
    assert check_studies(m.studies).ok
    assert {s.split for s in m.studies} == {"train", "validate", "test"}
    shared = [s for s in m.studies if "post-intubuation" in s.images[0]]
    assert len(shared) == 4 and len({s.split for s in shared}) == 1
    for i in range(0, len(m), 37):
        with Image.open(m.image_paths(i)[0]) as im:
            assert max(im.size) <= 256


MULTI = "FINDINGS:\nThe heart is normal in size.\r\nThe lungs are clear, no effusion.\n\nIMPRESSION:\nNo acute process."


def _lines(path):
    """The file's physical lines as an editor shows them (split on \\n; no lone \\r is written)."""
    return path.read_bytes().split(b"\n")


def test_prepare_csv_rejects_name_the_line_where_the_record_starts(tmp_path):
    """Renamed columns, multi-line quoted reports before and after every bad record: each reject
    names the physical line where its record starts, its image, study and patient ids."""
    img = tmp_path / "img"
    img.mkdir()
    for i in range(8):
        (img / f"g{i}.jpg").write_bytes(jpeg_bytes(64, 64, seed=i))
    (img / "trunc.jpg").write_bytes(jpeg_bytes(400, 320)[:500])
    (img / "zero.jpg").write_bytes(b"")
    good = iter(range(100))

    def ok():  # a good record with a multi-line report
        i = next(good)
        return [f"G{i}", f"img/g{i % 8}.jpg", f"mrn{i}", MULTI.replace("normal", f"normal {i}"), "1"]

    # (accession, image, mrn, report, label) -> the reason expected, None for a good record
    plan = [
        (ok(), None), (ok(), None),
        (["B-empty", "img/g0.jpg", "mrn-e", "", "0"], R.EMPTY_REPORT),
        (ok(), None),
        (["B-space", "img/g1.jpg", "mrn-s", " \n\t\r\n ", "0"], R.EMPTY_REPORT),
        (["B-short", "img/g2.jpg", "mrn-n", "FINDINGS:\nClear.\n\nIMPRESSION:\nNormal.", "0"], R.NO_SENTENCE),
        (ok(), None),
        (["B-missing", "img/nowhere.jpg", "mrn-m", MULTI, "1"], R.MISSING_IMAGE),
        (ok(), None),
        (["B-trunc", "img/trunc.jpg", "mrn-t", MULTI, "1"], R.CORRUPT_IMAGE),
        (["B-zero", "img/zero.jpg", "mrn-z", MULTI, "1"], R.EMPTY_FILE),
        (ok(), None),
        (["B-noimage", "", "mrn-x", MULTI, "1"], R.MISSING_VALUE),
        (["B-label", "img/g3.jpg", "mrn-l", MULTI, "perhaps"], R.BAD_VALUE),
        (ok(), None),
        (["B-fields", "img/g4.jpg", "mrn-f", MULTI], R.BAD_VALUE),  # one field short
        (ok(), None),
        ("B-latin1", R.NON_UTF8_REPORT),  # raw bytes, below
        (ok(), None),
        (["B-short2", "img/g5.jpg", "mrn-n2", "Ok.\nFine.", "0"], R.NO_SENTENCE),
        (ok(), None), (ok(), None),
    ]  # fmt: skip
    data = bytearray(b"\xef\xbb\xbf")  # a BOM, as spreadsheets write it
    data += b'Accession,File Path,MRN,"Radiology\nReport",Effusion\r\n'  # a header on two lines
    expected_line = {}
    for k, (rec, reason) in enumerate(plan):
        if k == 7:
            data += b"\r\n"  # an empty line: skipped, counted
        line = data.count(b"\n") + 1
        if rec == "B-latin1":
            data += b'B-latin1,img/g6.jpg,mrn-u,"FINDINGS:\nCaf\xe9 lungs are clear today.\nStable.",1\r\n'
        else:
            buf = io.StringIO()
            csv.writer(buf).writerow(rec)
            data += buf.getvalue().encode()
        if reason is not None:
            expected_line[rec if isinstance(rec, str) else rec[0]] = (line, reason)
    path = tmp_path / "my_pairs.csv"
    path.write_bytes(bytes(data))
    lines = _lines(path)

    cfg = CsvConfig(csv=path, image_col="File Path", text_col="Radiology\nReport", patient_col="MRN",
                    id_col="Accession", label_cols=("Effusion",))  # fmt: skip
    prepare_csv(tmp_path / "out", cfg, workers=1, progress=False)
    rej = read_rejects(tmp_path / "out" / "rejects.csv")
    assert {r.item: (r.line, r.reason) for r in rej} == expected_line
    assert len(rej) == len(expected_line)
    for r in rej:
        at = lines[r.line - 1]
        assert at.lstrip(b"\xef\xbb\xbf").startswith(f"{r.study_id},".encode()), (r, at)
        assert r.source == "my_pairs.csv" and r.study_id == r.item
        rec = next(rec for rec, _ in plan if (rec if isinstance(rec, str) else rec[0]) == r.item)
        if isinstance(rec, list):
            assert (r.image, r.patient_id) == (rec[1], rec[2])
            assert at.startswith(f"{rec[0]},{rec[1]},{rec[2]},".encode())
        else:
            assert (r.image, r.patient_id) == ("img/g6.jpg", "mrn-u")
        assert r.message.startswith(f"study {r.study_id}, patient {r.patient_id}")
        assert f"my_pairs.csv line {r.line}" in r.message
        # Row-level rejects keep naming "csv:line" in `file`; image rejects name the image there.
        assert r.file == (r.image if r.reason in (R.MISSING_IMAGE, R.CORRUPT_IMAGE, R.EMPTY_FILE) else f"my_pairs.csv:{r.line}")
    # The non-UTF-8 bytes reach the file as an escape, not as a crash or a silent drop.
    latin = next(r for r in rej if r.item == "B-latin1")
    assert latin.reason == R.NON_UTF8_REPORT
    m = load_manifest(tmp_path / "out")
    assert len(m) == sum(reason is None for _, reason in plan)

    # Without an id column the default study id is the record's start line, the same as `line`.
    cfg = CsvConfig(csv=path, image_col="File Path", text_col="Radiology\nReport", patient_col="MRN", label_cols=("Effusion",))
    prepare_csv(tmp_path / "out2", cfg, workers=1, progress=False)
    rej2 = read_rejects(tmp_path / "out2" / "rejects.csv")
    assert sorted((r.line, r.reason) for r in rej2) == sorted(expected_line.values())
    assert all(r.item == r.study_id == f"row{r.line}" for r in rej2)
    m2 = load_manifest(tmp_path / "out2")
    for s in m2.studies:  # kept rows too: "row<N>" is the line holding the record's start
        assert lines[int(s.study_id[3:]) - 1].startswith(b"G")


def test_rejects_file_keeps_the_original_columns_first(tmp_path):
    log = R.RejectLog()
    log.add("s1", "a.csv:3", R.EMPTY_REPORT, "", R.Origin("a.csv", 3, "x.jpg;y.jpg", "s1", "p1"))
    log.add("d9", "img/d9.jpg", R.CORRUPT_IMAGE, "bad \udce9 bytes")  # no origin: the old call
    log.write(tmp_path / "rejects.csv")
    with open(tmp_path / "rejects.csv", encoding="utf-8", newline="") as f:
        header = next(csv.reader(f))
    assert header[:4] == ["item", "file", "reason", "detail"]
    got = read_rejects(tmp_path / "rejects.csv")
    assert got[0].line == 3 and got[0].image == "x.jpg;y.jpg" and got[0].patient_id == "p1"
    assert got[0].message == "study s1, patient p1, image x.jpg;y.jpg (a.csv line 3): dropped, the report is empty."
    assert got[1].line is None and got[1].detail == "bad \\xe9 bytes" and got[1].message.startswith("d9 (img/d9.jpg)")
    # A rejects.csv of the four-column format still reads.
    (tmp_path / "old.csv").write_text("item,file,reason,detail\nrow5,p.csv:5,empty_report,x\n", encoding="utf-8")
    (old,) = read_rejects(tmp_path / "old.csv")
    assert (old.item, old.file, old.reason, old.detail, old.line) == ("row5", "p.csv:5", "empty_report", "x", None)
