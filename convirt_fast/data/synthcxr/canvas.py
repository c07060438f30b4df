"""SynthCXR drawing primitives: the canvas the layers and findings draw on, PIL-drawn masks, and
the per-size random banks (vessel textures, pixel grain), built once from fixed seeds and
cropped at per-study offsets so that every image stays a pure function of its study's seed.

Coordinates are normalised to the image (x right, y down, in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from convirt_fast.data.synthcxr.anatomy import Anatomy


@dataclass
class Canvas:
    size: int
    a: Anatomy
    x: np.ndarray  # (1, S)
    y: np.ndarray  # (S, 1)
    lung: dict[int, np.ndarray]
    air_keep: np.ndarray  # multiplies lung air: 1 aerated, 0 fully opacified
    extra_air: np.ndarray  # air with no lung in it (pneumothorax)
    add: np.ndarray  # density added on top (lines, bands)
    markings_keep: np.ndarray


@lru_cache(maxsize=4)
def grid(size: int) -> np.ndarray:
    return (np.arange(size, dtype=np.float32) + 0.5) / size



@lru_cache(maxsize=4)
def vessel_bank(size: int, count: int = 6) -> np.ndarray:
    """(count, 2*size, 2*size) lung-marking textures centred on a hilum: branching vessels that
    fan out from the hilum and fade toward the periphery."""
    rng = np.random.default_rng(1234)
    n = 2 * size
    c = (np.arange(n, dtype=np.float32) - size + 0.5) / size
    x, y = c[None, :], c[:, None]
    r = np.sqrt(x * x + y * y)
    theta = np.arctan2(y, x)
    out = np.empty((count, n, n), np.float32)
    sharp = 10 + 90 * r  # lines narrow as they run out
    for i in range(count):
        acc = np.zeros((n, n), np.float32)
        for freq, amp in ((9, 1.0), (17, 0.7), (31, 0.45)):
            wobble = 0.6 * np.sin(r * rng.uniform(10, 20) + rng.uniform(0, 6.3))
            wave = np.cos(freq * theta + rng.uniform(0, 6.3) + wobble)
            acc += amp * np.maximum(wave, 0) ** sharp
        fade = np.exp(-r / 0.22) * np.clip((r - 0.015) / 0.05, 0, 1)
        out[i] = acc * fade + 1.2 * np.exp(-((r / 0.045) ** 2))
    return out / out.max()


NOISE_STEP = 0.002  # noise sigma (fraction of full scale) per level of the banks
NOISE_LEVELS = 16


@lru_cache(maxsize=2 * NOISE_LEVELS)
def noise_bank(size: int, level: int) -> np.ndarray:
    """(2*size)^2 Gaussian grain in grey levels at sigma = level * NOISE_STEP * 255, int16."""
    unit = np.random.default_rng(4321).standard_normal((2 * size, 2 * size), dtype=np.float32)
    return np.rint(unit * (level * NOISE_STEP * 255)).astype(np.int16)


def mask(size: int, polygons, *, fill: int = 255, lines=()) -> np.ndarray:
    img = Image.new("L", (size, size))
    d = ImageDraw.Draw(img)
    for poly in polygons:
        d.polygon((np.asarray(poly) * size).ravel().tolist(), fill=fill)
    for pts, width in lines:
        d.line((np.asarray(pts) * size).ravel().tolist(), fill=fill, width=max(1, round(width * size)), joint="curve")
    return np.asarray(img).astype(np.float32) * (1.0 / 255.0)


def crop(bank: np.ndarray, size: int, cx: float, cy: float) -> np.ndarray:
    """The size x size window of a (2*size)-square bank whose centre lands at (cx, cy)."""
    ox = int(np.clip(round(size - cx * size), 0, size))
    oy = int(np.clip(round(size - cy * size), 0, size))
    return bank[oy : oy + size, ox : ox + size]


def smooth_noise(rng: np.random.Generator, size: int, cells: int = 8) -> np.ndarray:
    """Blobby low-frequency texture in [0, 1] (patchy consolidation)."""
    small = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), np.float32) * (1 / 255)


def circle(cx: float, cy: float, r: float, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)
