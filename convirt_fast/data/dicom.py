"""DICOM radiographs to one grayscale array at full depth (pydicom, the `dicom` extra).

`read_dicom(path)` returns what a display would show, as (H, W) uint8 for files of <= 8 stored
bits and uint16 otherwise, in the order DICOM PS3.3 C.11 prescribes:

1. stored values (`pixel_array`; compressed transfer syntaxes through pydicom's decoders:
   RLE natively, JPEG / JPEG-LS / JPEG 2000 through the pylibjpeg plugins or python-gdcm);
2. the Modality LUT: RescaleSlope / RescaleIntercept (or a Modality LUT Sequence);
3. the VOI: the first window (WindowCenter / WindowWidth, with VOILUTFunction LINEAR,
   LINEAR_EXACT or SIGMOID) or the first VOI LUT Sequence item, mapped to [0, 1]; without a VOI
   the full range of the stored values (BitsStored, signed or not) maps to [0, 1];
4. MONOCHROME1 (high values dark) inverted, so that bone is bright as in MONOCHROME2;
5. [0, 1] scaled to the output range: 0..255 for <= 8 stored bits, else 0..65535. A 16-bit
   MONOCHROME2 file without LUTs therefore comes out exactly as stored (the same pixels as a
   16-bit PNG of it), a 12-bit one scaled by 65535 / 4095.

Everything that cannot be one radiograph raises `DicomError` (an ImageError) with a reason code
(`rejects.py`) and a message naming the file: not a DICOM, no pixel data (structured reports,
presentation states), several frames, colour data, a transfer syntax without an installed
decoder, truncated or corrupt pixel data.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from convirt_fast.data import rejects as R
from convirt_fast.data.errors import ImageError

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
# Suffixes that are never DICOM: no need to open the file to look for the magic.
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
_PREAMBLE = 128  # DICOM Part 10: a 128-byte preamble, then "DICM"
INSTALL_HINT = 'pip install "convirt_fast[dicom]"'


class DicomError(ImageError):
    """A DICOM file that cannot be used; `reason` is a rejects.csv reason code."""

    def __init__(self, message: str, reason: str = R.CORRUPT_IMAGE) -> None:
        super().__init__(message)
        self.reason = reason


def is_dicom(path: str | Path) -> bool:
    """By suffix, or by the "DICM" magic at byte 128 (files without a suffix, as in many PACS
    exports). A file that cannot be opened is not a DICOM here (its reader says why)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in _IMAGE_SUFFIXES:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(_PREAMBLE + 4)
    except OSError:
        return False
    return head[_PREAMBLE:] == b"DICM"


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise DicomError(f"pydicom is not installed, so DICOM files cannot be read: {INSTALL_HINT}",
                         R.UNSUPPORTED_DICOM) from None
    return pydicom


def read_dicom(path: str | Path) -> np.ndarray:
    """(H, W) uint8 or uint16 display values of a single-frame grayscale DICOM (module doc)."""
    path = Path(path)
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():  # pydicom warns about each oddity of a header; what matters raises below
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except FileNotFoundError:
        raise DicomError(f"{path}: image file not found", R.MISSING_IMAGE) from None
    except InvalidDicomError as error:
        raise DicomError(f"{path}: not a DICOM file ({error})") from None
    except Exception as error:  # noqa: BLE001 - a damaged header raises many types
        raise DicomError(f"{path}: unreadable DICOM header ({type(error).__name__}: {error})") from None
    stored = _stored_values(ds, path)
    shown = _display(ds, stored, path)
    monochrome = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if monochrome == "MONOCHROME1":
        shown = 1.0 - shown
    bits = _bits_stored(ds)
    top = 255 if bits <= 8 else 65535
    return np.rint(shown * top).astype(np.uint8 if bits <= 8 else np.uint16)


def _bits_stored(ds) -> int:
    bits = ds.get("BitsStored") or ds.get("BitsAllocated") or 16
    return int(bits)


def _stored_values(ds, path: Path) -> np.ndarray:
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        if sop is None:  # neither what it is nor pixels: a damaged file, not a report
            raise DicomError(f"{path}: no SOP class and no pixel data (damaged or truncated header)")
        raise DicomError(f"{path}: no pixel data, not an image DICOM: {sop.name} ({sop})", R.NOT_AN_IMAGE)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(f"{path}: {frames} frames; only single-frame radiographs are used", R.MULTI_FRAME)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"{path}: PhotometricInterpretation {photometric or '(missing)'}; only grayscale "
                         f"(MONOCHROME1/2) radiographs are used", R.UNSUPPORTED_DICOM)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        pixels = ds.pixel_array
    except NotImplementedError as error:  # no decoder for this transfer syntax
        name = syntax.name if syntax is not None else "unknown transfer syntax"
        raise DicomError(f"{path}: no pydicom decoder exists for {name} ({_first_line(error)})",
                         R.UNSUPPORTED_DICOM) from None
    except RuntimeError as error:
        if "missing dependencies" in str(error):  # pydicom knows the syntax; its decoder plugins are absent
            name = syntax.name if syntax is not None else "this transfer syntax"
            raise DicomError(f"{path}: no decoder installed for {name} ({INSTALL_HINT})", R.UNSUPPORTED_DICOM) from None
        raise DicomError(f"{path}: corrupt pixel data ({_first_line(error)})") from None
    except Exception as error:  # noqa: BLE001 - truncated or damaged pixel data raises many types
        raise DicomError(f"{path}: corrupt or truncated pixel data ({type(error).__name__}: "
                         f"{_first_line(error)})") from None
    if pixels.ndim != 2:
        raise DicomError(f"{path}: pixel array of shape {pixels.shape}; expected one 2-D frame", R.UNSUPPORTED_DICOM)
    return pixels


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _display(ds, stored: np.ndarray, path: Path) -> np.ndarray:
    """Modality LUT, then VOI, as float64 in [0, 1] (module doc, steps 2-3)."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    try:
        values = apply_modality_lut(stored, ds).astype(np.float64, copy=False)
        window = _first_window(ds)
        if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
            item = ds.VOILUTSequence[0]
            out_bits = int(item.LUTDescriptor[2])
            lut_input = np.rint(values).astype(np.int64)  # a LUT is indexed by the (integer) modality values
            return np.clip(apply_voi(lut_input, ds, index=0).astype(np.float64) / (2**out_bits - 1), 0.0, 1.0)
        if window is not None:
            center, width = window
            function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
            return _apply_window(values, center, width, function, path)
    except DicomError:
        raise
    except Exception as error:  # noqa: BLE001 - malformed LUT attributes
        raise DicomError(f"{path}: unusable Modality/VOI LUT attributes ({type(error).__name__}: "
                         f"{_first_line(error)})", R.UNSUPPORTED_DICOM) from None
    # No VOI: the stored value range, through the Modality LUT, maps to [0, 1].
    bits = _bits_stored(ds)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = apply_modality_lut(np.array([low, high], dtype=np.int64), ds).astype(np.float64)
    lo, hi = float(ends.min()), float(ends.max())
    if hi <= lo:
        raise DicomError(f"{path}: Modality LUT maps every value to {lo}", R.UNSUPPORTED_DICOM)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _first_window(ds) -> tuple[float, float] | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center, width = ds.WindowCenter, ds.WindowWidth
    center = float(center[0] if _is_multi(center) else center)
    width = float(width[0] if _is_multi(width) else width)
    return center, width


def _is_multi(value) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _apply_window(x: np.ndarray, center: float, width: float, function: str, path: Path) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2-3 windowing, output in [0, 1]."""
    if function == "LINEAR":
        if width < 1:
            raise DicomError(f"{path}: WindowWidth {width} < 1 for a LINEAR VOI", R.UNSUPPORTED_DICOM)
        y = ((x - (center - 0.5)) / (width - 1) + 0.5) if width > 1 else (x > center - 0.5).astype(np.float64)
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise DicomError(f"{path}: WindowWidth {width} <= 0", R.UNSUPPORTED_DICOM)
        y = (x - center) / width + 0.5
    elif function == "SIGMOID":
        if width <= 0:
            raise DicomError(f"{path}: WindowWidth {width} <= 0", R.UNSUPPORTED_DICOM)
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    else:
        raise DicomError(f"{path}: VOILUTFunction {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID",
                         R.UNSUPPORTED_DICOM)
    return np.clip(y, 0.0, 1.0)
