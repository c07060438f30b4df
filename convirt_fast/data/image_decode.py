"""Decoding images to one grayscale channel, keeping 16-bit precision, for the torch backend.

Two places decode: DataLoader workers (`read_image`: PIL, any format, 8 or 16 bits, and DICOM
through pydicom in `dicom.py`), or, with
`data.decode=gpu`, the main process on the GPU (`decode_jpegs_on_device`: torchvision's batched
nvJPEG) for the JPEGs whose bytes the workers read (`read_encoded`); `pad_batch` and
`pad_batch_on_device` put either result on one zero canvas. Every reader applies PIL's
decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`, from the header) with the same error.
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from convirt_fast.data.errors import ImageError  # raised here; the loader imports it from here too

# 16-bit values are carried in int32: torch has few uint16 kernels.
MAX_8BIT = 255.0
MAX_16BIT = 65535.0
# JPEG markers: start and end of image. A file that does not end with EOI is truncated (or has
# trailing bytes): it is decoded on the CPU, whose full decode finds out which.
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_JPEG_TAIL = 64  # EOI may be followed by a little padding

DECODES = ("auto", "cpu", "gpu")
"""Values of data.decode (see `check_decode`; the loader's `resolve_decode` picks one)."""


def check_decode(decode: str, backend: str) -> None:
    """The one check of data.decode, for DataConfig and the loader: one of DECODES, and gpu only
    with the torch backend (DALI decodes by itself)."""
    if decode not in DECODES:
        raise ValueError(f"data.decode must be one of {DECODES}, got {decode!r}")
    if decode == "gpu" and backend == "dali":
        raise ValueError("data.decode=gpu is an option of the torch backend; DALI decodes by itself (nvJPEG on a "
                         "GPU): use data.backend=torch, or data.decode=auto with DALI")


@contextlib.contextmanager
def _open(path: Path, source: io.BytesIO | None = None):
    """`Image.open(source or path)` with PIL's decompression-bomb limit as an ImageError.

    PIL checks the header's size against Image.MAX_IMAGE_PIXELS when it opens a file: over the
    limit it warns, over twice the limit it raises. Both are refused here, with one message, so
    the worker decode, the header reads for DALI and for the GPU decoder all reject the same
    files (a decoder that skipped the check would decode what the others refuse)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path if source is None else source) as image:
                yield image
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            raise ImageError(f"{path}: cannot decode image ({error})") from None


def pil_pixels(image) -> np.ndarray:
    """A decoded PIL image as (H, W) uint8, or uint16 for 16-bit modes; colour to luminance."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.uint16)
    if image.mode == "I":  # 32-bit container, e.g. some 16-bit PNGs
        return np.asarray(image).clip(0, 65535).astype(np.uint16)
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """(H, W) uint8, or uint16 for 16-bit images. Colour images are converted to luminance.
    DICOM files (by suffix or by their "DICM" magic) go through `convirt_fast.data.dicom`."""
    path = Path(path)
    from convirt_fast.data.dicom import is_dicom, read_dicom  # pydicom loads only when a DICOM comes

    if is_dicom(path):
        return read_dicom(path)
    try:
        with _open(path) as image:
            image.load()  # decode fully here, so truncated files fail here
            return pil_pixels(image)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: cannot decode image ({error})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the header only; ImageError over the decompression-bomb limit."""
    try:
        with _open(Path(path)) as image:
            width, height = image.size
            return height, width
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from None


def pad_batch(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Stack images of different sizes top-left on a zero canvas.

    Returns (B, 1, Hmax, Wmax) pixels (uint8, or int32 when any image is 16-bit, 8-bit ones then
    scaled by 257 to the 16-bit range), heights, widths and the value that maps to 1.0.
    """
    sixteen = any(a.dtype == np.uint16 for a in arrays)
    heights = torch.tensor([a.shape[0] for a in arrays])
    widths = torch.tensor([a.shape[1] for a in arrays])
    canvas = torch.zeros(len(arrays), 1, int(heights.max()), int(widths.max()), dtype=torch.int32 if sixteen else torch.uint8)
    for i, a in enumerate(arrays):
        if sixteen:
            pixels = torch.from_numpy(a.astype(np.int32) * (257 if a.dtype == np.uint8 else 1))
        else:
            pixels = torch.from_numpy(np.array(a, copy=True))
        canvas[i, 0, : a.shape[0], : a.shape[1]] = pixels
    return canvas, heights, widths, MAX_16BIT if sixteen else MAX_8BIT


def is_complete_jpeg(data: np.ndarray) -> bool:
    """The bytes start with a JPEG SOI marker and end with EOI (within the last few bytes).

    Entropy-coded JPEG data never contains 0xFFD9 (0xFF is stuffed), so EOI in the tail means
    the file was written to its end; a truncated file fails this and goes to the CPU decoder.
    """
    return data.size > 4 and bytes(data[:2]) == _JPEG_SOI and _JPEG_EOI in bytes(data[-_JPEG_TAIL:])


def read_encoded(path: str | Path) -> tuple[np.ndarray, int, int]:
    """For device decoding: (encoded bytes, height, width) of a complete JPEG, or (pixels,
    height, width) decoded here for anything else (PNG, 16-bit, DICOM-derived, a JPEG that
    looks truncated). Encoded bytes are a 1-D uint8 array; pixels `read_image`'s 2-D uint8 or
    uint16 array. Raises ImageError for what cannot be used, as `read_image` (a JPEG over the
    decompression-bomb limit too, from its header, with `read_image`'s message)."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except OSError as error:
        raise ImageError(f"{path}: cannot read ({error})") from None
    if is_complete_jpeg(data):
        try:
            with _open(path, io.BytesIO(data.tobytes())) as image:  # header only
                width, height = image.size
                if image.format == "JPEG":
                    return data, height, width
        except ImageError:
            raise  # over the size limit
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            pass  # the full decode below names the problem
    pixels = read_image(path)
    return pixels, pixels.shape[0], pixels.shape[1]


def decode_jpegs_on_device(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Batched JPEG decode to one channel (luma) with torchvision: nvJPEG on a CUDA device (one
    call for the batch), libjpeg-turbo on the CPU. Returns (H, W) uint8 tensors on `device`.
    Raises RuntimeError when an image does not decode (torchvision fails the whole batch)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 marks its decoders deprecated (TorchCodec)
        if device.type != "cuda":
            return [image[0] for image in decode_jpeg(encoded, mode=ImageReadMode.GRAY, device=device)]
        # torchvision allocates the outputs on the current stream but nvJPEG writes them from a
        # stream of its own, without waiting for ours: memory just freed by a training step
        # still queued on the current stream could be overwritten. Outputs allocated on a side
        # stream come from that stream's pool, which nothing else uses; the current stream then
        # waits for the side stream, and the outputs are marked as used by it.
        current = torch.cuda.current_stream(device)
        side = _decode_stream(device)
        with torch.cuda.stream(side):
            images = decode_jpeg(encoded, mode=ImageReadMode.GRAY, device=device)
        current.wait_stream(side)
        for image in images:
            image.record_stream(current)
    return [image[0] for image in images]


@functools.lru_cache(maxsize=None)
def _decode_stream(device: torch.device) -> "torch.cuda.Stream":
    return torch.cuda.Stream(device=device)


@functools.lru_cache(maxsize=None)
def gpu_decode_status(device: str) -> str | None:
    """None when torchvision decodes JPEGs on `device` (nvJPEG), else the reason it cannot;
    found by decoding a tiny JPEG there once per process."""
    if not torch.cuda.is_available() or torch.device(device).type != "cuda":
        return "no CUDA device"
    try:
        buffer = io.BytesIO()
        Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(buffer, format="JPEG", quality=95)
        encoded = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        (image,) = decode_jpegs_on_device([encoded], torch.device(device))
        if tuple(image.shape) != (8, 8) or not image.is_cuda:
            return f"torchvision's GPU decode returned {tuple(image.shape)} on {image.device}"
    except Exception as error:  # noqa: BLE001 - any failure means: decode on the CPU
        return f"torchvision cannot decode JPEGs on {device}: {str(error).splitlines()[0] if str(error) else error!r}"
    return None


def host_to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device` without making the host wait: on CUDA through pinned memory
    (pinned here unless it already is) with a non-blocking copy. A copy from pageable memory
    waits for the work queued before it (the training step); the caching host allocator keeps
    the pinned block until the copy is done, so the caller may drop it at once."""
    if device.type == "cuda" and values.device.type == "cpu":
        if not values.is_pinned():
            values = values.pin_memory()
        return values.to(device, non_blocking=True)
    return values.to(device)


def pad_batch_on_device(images: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    """`pad_batch` for 2-D tensors already decoded (on the device or not): (B, 1, Hmax, Wmax)
    on `device`, uint8, or int32 when any image is 16-bit (int32 input; 8-bit ones then x 257),
    and the value that maps to 1.0. The images still on the host (decoded by the workers) go
    over in one copy: packed into one buffer, pinned from the start on CUDA."""
    sixteen = any(image.dtype == torch.int32 for image in images)
    dtype = torch.int32 if sixteen else torch.uint8
    height = max(int(image.shape[0]) for image in images)
    width = max(int(image.shape[1]) for image in images)
    canvas = torch.zeros(len(images), 1, height, width, dtype=dtype, device=device)
    on_host = [i for i, image in enumerate(images) if image.device.type == "cpu"]
    placed = {i: image for i, image in enumerate(images) if image.device.type != "cpu"}
    if on_host:
        sizes = [images[i].numel() for i in on_host]
        packed = torch.empty(sum(sizes), dtype=dtype, pin_memory=device.type == "cuda")
        for i, piece in zip(on_host, packed.split(sizes)):
            piece = piece.view(images[i].shape).copy_(images[i])
            if sixteen and images[i].dtype == torch.uint8:
                piece.mul_(257)
        for i, piece in zip(on_host, host_to_device(packed, device).split(sizes)):
            placed[i] = piece.view(images[i].shape)
    for i, image in placed.items():
        if sixteen and image.dtype == torch.uint8:
            image = image.to(torch.int32) * 257
        canvas[i, 0, : image.shape[0], : image.shape[1]] = image
    return canvas, MAX_16BIT if sixteen else MAX_8BIT
