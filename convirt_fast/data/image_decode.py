"""Decoding images to one grayscale channel, keeping 16-bit precision, for the torch backend."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# 16-bit values are carried in int32: torch has few uint16 kernels.
MAX_8BIT = 255.0
MAX_16BIT = 65535.0


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the problem."""


def read_image(path: str | Path) -> np.ndarray:
    """(H, W) uint8, or uint16 for 16-bit images. Colour images are converted to luminance."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # decode fully here, so truncated files fail here
                if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                    return np.asarray(image, dtype=np.uint16)
                if image.mode == "I":  # 32-bit container, e.g. some 16-bit PNGs
                    return np.asarray(image).clip(0, 65535).astype(np.uint16)
                if image.mode != "L":
                    image = image.convert("L")
                return np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{path}: cannot decode image ({error})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the header only."""
    try:
        with Image.open(path) as image:
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
