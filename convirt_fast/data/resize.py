"""Pre-resizing images to 256 px on the long side, in parallel, with a progress bar.

Large JPEGs are downscaled while decoding (libjpeg's DCT scaling, through PIL's `Image.draft`):
a 2500 x 3000 radiograph is decoded at 1/8 scale, never in full, then resampled to the target
with a Lanczos filter. Grayscale is kept one channel ('L'); colour inputs are converted to 'L';
16-bit PNGs stay 16-bit. DICOM files (`dicom.py`: LUTs applied, MONOCHROME1 inverted) are
resized from their full-depth array by the same code as a PNG of that array, and written as PNG
(16-bit for more than 8 stored bits). Outputs are written atomically, so a file present after an
interrupted run is complete, and a rerun skips outputs that are present and decode.

Pillow releases the GIL while decoding, resampling and encoding, so a thread pool scales over
cores without pickling images between processes.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from convirt_fast.data import rejects as R
from convirt_fast.io import atomic_write
from convirt_fast.data.errors import ImageError

LONG_SIDE = 256
JPEG_QUALITY = 95  # high enough that re-encoding adds no visible artefact at 256 px
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


@dataclass(frozen=True)
class ResizeTask:
    src: Path
    dst: Path
    item: str = ""
    """What the image belongs to (a study id, a row), for the rejects file."""


@dataclass(frozen=True)
class ResizeResult:
    task: ResizeTask
    ok: bool
    skipped: bool = False
    reason: str = ""
    detail: str = ""


def output_suffix(src: Path) -> str:
    """JPEGs stay JPEG; everything else becomes PNG (lossless, 16-bit capable)."""
    return ".jpg" if src.suffix.lower() in (".jpg", ".jpeg") else ".png"


def target_size(width: int, height: int, long_side: int = LONG_SIDE) -> tuple[int, int]:
    """Scales the long side to `long_side`; never upscales."""
    scale = long_side / max(width, height)
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_resized(src: Path, long_side: int = LONG_SIDE, *, dct_scaling: bool = True) -> Image.Image:
    """Decodes `src` at (about) the target size and resamples it to exactly the target size.

    Raises OSError / UnidentifiedImageError / ValueError on a corrupt or truncated file.
    """
    from convirt_fast.data.dicom import is_dicom, read_dicom

    if is_dicom(src):
        return resize_array(read_dicom(src), long_side)
    with Image.open(src) as img:
        size = target_size(*img.size, long_side)
        if dct_scaling and img.format == "JPEG":
            # draft() picks the largest DCT scale (1/2, 1/4, 1/8) that keeps the image at least
            # `size`, and decodes straight to one channel.
            img.draft("L", size)
        img.load()
        if img.mode in SIXTEEN_BIT_MODES:
            return _resize_16bit(img, size)
        if img.mode != "L":
            img = img.convert("L")
        if img.size != size:
            img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=None)
        return img


def resize_array(pixels: np.ndarray, long_side: int) -> Image.Image:
    """A decoded (H, W) uint8 / uint16 array, resized exactly as a PNG holding it would be."""
    img = Image.fromarray(pixels)  # uint8 -> 'L', uint16 -> 'I;16'
    size = target_size(*img.size, long_side)
    if pixels.dtype == np.uint16:
        return _resize_16bit(img, size)
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=None) if img.size != size else img


def _resize_16bit(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32)
    if img.size != size:
        arr = np.asarray(Image.fromarray(arr, mode="F").resize(size, Image.Resampling.LANCZOS))
    return Image.fromarray(np.clip(np.rint(arr), 0, 65535).astype(np.uint16))


def is_valid_output(path: Path, long_side: int = LONG_SIDE) -> bool:
    """A finished output: it decodes in full and is no larger than the target."""
    try:
        with Image.open(path) as img:
            img.load()
            return max(img.size) <= long_side
    except Exception:  # noqa: BLE001 - whatever is wrong with it, it is redone
        return False


def _usable_as_is(src: Path, fmt: str, long_side: int) -> bool:
    """Whether `src` can be copied as it is. Reads the header; only a copy candidate (small
    already) is decoded in full, so that a truncated file is caught: large files go through
    the DCT-scaled decode instead, never a full one."""
    from convirt_fast.data.dicom import is_dicom

    if is_dicom(src):
        return False
    with Image.open(src) as img:
        if img.format != fmt or max(img.size) > long_side or img.mode not in ("L", *SIXTEEN_BIT_MODES):
            return False
        img.load()
        return True


def resize_one(task: ResizeTask, long_side: int = LONG_SIDE) -> ResizeResult:
    if task.dst.exists() and is_valid_output(task.dst, long_side):
        return ResizeResult(task, ok=True, skipped=True)
    try:
        if not task.src.is_file():
            return ResizeResult(task, ok=False, reason=R.MISSING_IMAGE, detail="no such file")
        if task.src.stat().st_size == 0:
            return ResizeResult(task, ok=False, reason=R.EMPTY_FILE, detail="zero-byte file")
        fmt = "JPEG" if task.dst.suffix.lower() in (".jpg", ".jpeg") else "PNG"
        if _usable_as_is(task.src, fmt, long_side):
            # Already small, one channel, right format: keep the bytes (no second JPEG loss;
            # the same image prepared twice stays byte-identical, which `check` relies on).
            with atomic_write(task.dst, "wb", fsync=False) as f:
                f.write(task.src.read_bytes())
            return ResizeResult(task, ok=True)
        img = decode_resized(task.src, long_side)
        with atomic_write(task.dst, "wb", fsync=False) as f:
            img.save(f, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {}))
        return ResizeResult(task, ok=True)
    except ImageError as e:  # DICOM: its own reason codes (no pixel data, multi-frame, no decoder, ...)
        return ResizeResult(task, ok=False, reason=getattr(e, "reason", R.CORRUPT_IMAGE), detail=str(e))
    except Exception as e:  # noqa: BLE001 - decoders raise many types on bad bytes; none may stop a prepare
        return ResizeResult(task, ok=False, reason=R.CORRUPT_IMAGE, detail=f"{type(e).__name__}: {e}")


def resize_all(
    tasks: Sequence[ResizeTask],
    *,
    long_side: int = LONG_SIDE,
    workers: int = 0,
    progress: bool = True,
    desc: str = "resize",
) -> list[ResizeResult]:
    """Resizes every task in parallel (`workers` threads, 0 = all cores); results in task order."""
    from tqdm import tqdm

    workers = workers or os.cpu_count() or 1
    results: list[ResizeResult | None] = [None] * len(tasks)
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=len(tasks), desc=desc, unit="img", disable=not progress
    ) as bar:
        futures = {pool.submit(resize_one, t, long_side): i for i, t in enumerate(tasks)}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            bar.update(1)
    return [r for r in results if r is not None]

