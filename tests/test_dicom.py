"""DICOM input: pixels as a display shows them (LUTs, MONOCHROME1, depth), compressed syntaxes,
the same pixels as a PNG through `prepare csv`, and every bad DICOM named in rejects.csv."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pydicom", reason="the dicom extra is not installed")

from convirt_fast.data import rejects as R  # noqa: E402
from convirt_fast.data.dicom import DicomError, is_dicom, read_dicom  # noqa: E402
from convirt_fast.data.image_decode import read_image  # noqa: E402
from convirt_fast.data.manifest import load_manifest  # noqa: E402
from convirt_fast.data.rejects import read_rejects  # noqa: E402
from convirt_fast.prepare.own_csv import CsvConfig, prepare_csv  # noqa: E402
from fixtures_data.fake_releases import BASIC_TEXT_SR, pixels, write_dicom, write_png  # noqa: E402

TEXT = "FINDINGS: The heart is normal in size. The lungs are clear.\n\nIMPRESSION: No acute process."


def _j2k_available() -> str | None:
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless

    encoder = get_encoder(JPEG2000Lossless)
    return None if encoder.is_available else f"no JPEG 2000 encoder: {encoder.missing_dependencies}"


def test_16bit_and_8bit_kept_exactly(tmp_path):
    a16 = pixels(30, 40, 1, bits=16)
    a8 = pixels(30, 40, 2)
    got16 = read_dicom(write_dicom(tmp_path / "a16.dcm", a16))
    got8 = read_dicom(write_dicom(tmp_path / "a8.dcm", a8))
    assert got16.dtype == np.uint16 and np.array_equal(got16, a16)
    assert got8.dtype == np.uint8 and np.array_equal(got8, a8)
    assert a16.max() > 255  # the test would not see a loss of depth otherwise


def test_12bit_scaled_to_16bit_range(tmp_path):
    a12 = (pixels(20, 20, 3, bits=16) >> 4).astype(np.uint16)  # 0..4095
    got = read_dicom(write_dicom(tmp_path / "a12.dcm", a12, bits_stored=12))
    assert np.array_equal(got, np.rint(a12 * (65535 / 4095)).astype(np.uint16))


def test_monochrome1_is_inverted(tmp_path):
    a = pixels(20, 24, 4, bits=16)
    got = read_dicom(write_dicom(tmp_path / "m1.dcm", a, monochrome1=True))
    assert np.array_equal(got, 65535 - a)


def test_rescale_then_window(tmp_path):
    # stored 0..65535, slope 2, intercept -1000: window centre 9000, width 4001 in rescaled units
    a = np.array([[0, 5000, 5500, 10000, 60000]], dtype=np.uint16)
    got = read_dicom(write_dicom(tmp_path / "w.dcm", a, rescale=(2.0, -1000.0), window=(9000.0, 4001.0)))
    rescaled = a.astype(np.float64) * 2 - 1000  # -1000, 9000, 10000, 19000, 119000
    expected = np.clip((rescaled - (9000 - 0.5)) / 4000 + 0.5, 0, 1)  # DICOM LINEAR window
    assert np.array_equal(got, np.rint(expected * 65535).astype(np.uint16))
    assert got[0, 0] == 0 and got[0, 3] == 65535 and 0 < got[0, 1] < 65535


def test_voi_lut_sequence(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    a = np.array([[0, 100, 200, 255]], dtype=np.uint16).repeat(2, 0) * 16  # 12-bit values
    path = write_dicom(tmp_path / "voi.dcm", a, bits_stored=12)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]  # 4096 entries from 0, 16-bit output
    item.LUTData = (np.arange(4096, dtype=np.uint16)[::-1] * 16).tobytes()  # an inverting LUT
    ds.VOILUTSequence = Sequence([item])
    ds.WindowCenter, ds.WindowWidth = 10, 2  # the LUT comes first; a window would give 0 / 65535
    ds.save_as(path)
    got = read_dicom(path)
    assert np.array_equal(got, ((4095 - a) * 16 / 65535 * 65535).round().astype(np.uint16))


def test_rle_compressed_equals_uncompressed(tmp_path):
    a = pixels(32, 28, 5, bits=16)
    plain = read_dicom(write_dicom(tmp_path / "plain.dcm", a))
    rle = read_dicom(write_dicom(tmp_path / "rle.dcm", a, syntax="rle"))
    assert np.array_equal(plain, rle)


def test_jpeg2000_lossless_when_a_codec_is_installed(tmp_path):
    if reason := _j2k_available():
        pytest.skip(reason)
    a = pixels(96, 80, 6, bits=16)  # openjpeg needs room for its 6 resolution levels
    assert np.array_equal(read_dicom(write_dicom(tmp_path / "j2k.dcm", a, syntax="j2k")), a)


def test_detected_by_magic_and_read_image_dispatches(tmp_path):
    a = pixels(16, 16, 7)
    path = write_dicom(tmp_path / "noext", a)  # PACS exports often have no suffix
    assert is_dicom(path) and not is_dicom(tmp_path / "x.png")
    assert np.array_equal(read_image(path), a)


@pytest.mark.parametrize("long_side", [256, 64])
def test_prepare_csv_dicom_gives_the_png_pixels(tmp_path, long_side):
    """The same array as a DICOM and as a PNG (16-bit and 8-bit, one larger than the target so
    it is resized, one MONOCHROME1 against its inverted PNG) prepare to identical pixels."""
    img = tmp_path / "img"
    a16, a8 = pixels(300, 220, 8, bits=16), pixels(180, 90, 9)
    write_dicom(img / "big16.dcm", a16)
    write_png(img / "big16.png", a16)
    write_dicom(img / "small8.dcm", a8)
    write_png(img / "small8.png", a8)
    write_dicom(img / "mono1.dcm", a16, monochrome1=True)
    write_png(img / "mono1.png", 65535 - a16)
    names = ["big16", "small8", "mono1"]
    rows = [[f"img/{n}.{ext}", f"p{i}{ext}", TEXT] for i, n in enumerate(names) for ext in ("dcm", "png")]
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["image", "patient", "report"], *rows])
    cfg = CsvConfig(csv=path, image_col="image", text_col="report", patient_col="patient", long_side=long_side)
    summary = prepare_csv(tmp_path / "out", cfg, workers=1, progress=False)
    assert summary.rejects == {}
    m = load_manifest(tmp_path / "out")
    prepared = {s.images[0]: np.asarray(Image.open(m.root / s.images[0])) for s in m.studies}
    for n in names:
        via_dicom, via_png = prepared[f"images/img/{n}.dcm.png"], prepared[f"images/img/{n}.png"]
        assert via_dicom.dtype == via_png.dtype and np.array_equal(via_dicom, via_png), n
        assert max(via_dicom.shape) == min(long_side, max(Image.open(img / f"{n}.png").size))
    assert prepared["images/img/big16.dcm.png"].max() > 255  # 16-bit depth survived the resize


def test_bad_dicoms_are_named_in_rejects(tmp_path):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    img = tmp_path / "img"
    good = write_dicom(img / "good.dcm", pixels(40, 40, 10))
    write_dicom(img / "sr.dcm", None, sop_class=BASIC_TEXT_SR)
    write_dicom(img / "frames.dcm", pixels(40, 40, 11), frames=2)
    trunc = write_dicom(img / "trunc.dcm", pixels(40, 40, 12, bits=16))
    trunc.write_bytes(trunc.read_bytes()[:-900])
    (img / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 50)
    ds = pydicom.dcmread(good)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG-2: no decoder anywhere
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds.save_as(img / "mpeg2.dcm")
    ds = pydicom.dcmread(good)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.50")  # JPEG baseline, bytes not a JPEG
    ds.PixelData = encapsulate([b"\x01" * 64])
    ds.save_as(img / "badjpeg.dcm")
    names = ["good", "sr", "frames", "trunc", "garbage", "mpeg2", "badjpeg", "absent"]
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["image", "report"], *[[f"img/{n}.dcm", TEXT] for n in names]])
    summary = prepare_csv(tmp_path / "out", CsvConfig(csv=path, image_col="image", text_col="report"), workers=2,
                          progress=False)
    assert summary.studies == 1
    got = {r.file: r.reason for r in read_rejects(tmp_path / "out" / "rejects.csv")}
    assert got == {
        "img/sr.dcm": R.NOT_AN_IMAGE, "img/frames.dcm": R.MULTI_FRAME, "img/trunc.dcm": R.CORRUPT_IMAGE,
        "img/garbage.dcm": R.CORRUPT_IMAGE, "img/mpeg2.dcm": R.UNSUPPORTED_DICOM, "img/badjpeg.dcm": R.CORRUPT_IMAGE,
        "img/absent.dcm": R.MISSING_IMAGE,
    }
    details = {r.file: r.detail for r in read_rejects(tmp_path / "out" / "rejects.csv")}
    assert "Basic Text SR" in details["img/sr.dcm"] and "2 frames" in details["img/frames.dcm"]
    assert "trunc.dcm" in details["img/trunc.dcm"]  # the message names the file
    meta = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert meta["rejects"][R.CORRUPT_IMAGE] == 3


def test_read_dicom_errors_name_the_file(tmp_path):
    with pytest.raises(DicomError, match="nothing.dcm: image file not found"):
        read_dicom(tmp_path / "nothing.dcm")
    a = np.stack([pixels(8, 8, 1)] * 3, -1)
    path = write_dicom(tmp_path / "rgb.dcm", pixels(8, 8, 1))
    import pydicom

    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = a.tobytes()
    ds.save_as(path)
    with pytest.raises(DicomError, match="rgb.dcm: PhotometricInterpretation RGB") as error:
        read_dicom(path)
    assert error.value.reason == R.UNSUPPORTED_DICOM


def test_prepare_mimic_cxr_from_dicoms(tmp_path):
    """The MIMIC-CXR (DICOM) release's files/ beside the JPG release's CSVs: --image-root,
    --image-format dcm; the same studies as from the JPEGs, images as PNG."""
    from convirt_fast.prepare.mimic_cxr import MimicConfig, prepare_mimic_cxr
    from fixtures_data.fake_mimic import build_fake_mimic

    root = tmp_path / "jpg"
    build_fake_mimic(root)
    dicoms = tmp_path / "dicom"
    for jpg in (root / "files").rglob("*.jpg"):
        with Image.open(jpg) as im:
            write_dicom(dicoms / jpg.relative_to(root).with_suffix(".dcm"), np.asarray(im.convert("L")))
    from_jpg = prepare_mimic_cxr(tmp_path / "a", MimicConfig(root), workers=1, progress=False)
    from_dcm = prepare_mimic_cxr(tmp_path / "b", MimicConfig(root, image_root=dicoms, image_format="dcm"), workers=1,
                                 progress=False)
    assert from_dcm.studies == from_jpg.studies > 0 and from_dcm.rejects == from_jpg.rejects
    m = load_manifest(tmp_path / "b")
    assert all(p.endswith(".png") for s in m.studies for p in s.images)
    with Image.open(m.root / m.studies[0].images[0]) as im:
        assert im.mode == "L" and max(im.size) == 256
    # auto: the .dcm where no .jpg is
    (root / m.studies[0].images[0].replace("images/", "", 1)).with_suffix(".jpg").unlink()
    (dicoms / m.studies[0].images[0].replace("images/", "", 1)).with_suffix(".dcm").rename(
        (root / m.studies[0].images[0].replace("images/", "", 1)).with_suffix(".dcm"))
    mixed = prepare_mimic_cxr(tmp_path / "c", MimicConfig(root), workers=1, progress=False)
    assert mixed.studies == from_jpg.studies and mixed.rejects == from_jpg.rejects
