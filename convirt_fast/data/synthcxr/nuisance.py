"""SynthCXR nuisance, independent of the labels: pose (rotation, shift, zoom), exposure (window,
gamma, anode heel), quantum noise, devices (ECG leads, central line, nasogastric tube) and the
side marker."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from convirt_fast.data.synthcxr.anatomy import LEFT, RIGHT
from convirt_fast.data.synthcxr.canvas import Canvas


@dataclass
class Nuisance:
    rotation: float  # degrees, in-plane
    shift: tuple[float, float]
    zoom: float
    window: tuple[float, float]  # density mapped to black and white
    gamma: float
    heel: float  # exposure gradient top to bottom (anode heel effect)
    noise: float
    ecg: bool
    central_line: bool
    ng_tube: bool
    marker: str


def sample_nuisance(rng: np.random.Generator) -> Nuisance:
    return Nuisance(
        rotation=float(rng.normal(0, 2.5)),
        shift=(float(rng.normal(0, 0.015)), float(rng.normal(0, 0.015))),
        zoom=float(rng.uniform(0.95, 1.06)),
        window=(float(rng.uniform(-0.02, 0.06)), float(rng.uniform(0.72, 0.86))),
        gamma=float(rng.uniform(0.8, 1.25)),
        heel=float(rng.uniform(-0.06, 0.06)),
        noise=float(rng.uniform(0.008, 0.03)),  # sigma, fraction of full scale
        ecg=bool(rng.random() < 0.15),
        central_line=bool(rng.random() < 0.2),
        ng_tube=bool(rng.random() < 0.12),
        marker=("L", "R", "")[int(rng.integers(3))],
    )


def pose(img: Image.Image, nz: Nuisance, size: int) -> Image.Image:
    """Rotation about the centre, zoom and shift (one bilinear affine resample at the render
    size), then bilinear upsampling to `size`, which also softens the polygons' edges. Two
    steps: PIL's affine resample costs 4x more at the output size than at the render size."""
    th = np.deg2rad(nz.rotation)
    k = 1.0
    cos, sin = np.cos(th) / nz.zoom, np.sin(th) / nz.zoom
    n = img.size[0]
    c = n / 2
    tx, ty = nz.shift[0] * n, nz.shift[1] * n
    # Output pixel (u, v) samples input pixel k * R^-1 (u - c - t) + k c.
    a, b = k * cos, k * sin
    d, e = -k * sin, k * cos
    coeffs = (a, b, k * c - a * (c + tx) - b * (c + ty), d, e, k * c - d * (c + tx) - e * (c + ty))
    img = img.transform((n, n), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    return img.resize((size, size), Image.Resampling.BILINEAR) if n != size else img


def draw_devices(c: Canvas, nz: Nuisance, rng) -> np.ndarray:
    a = c.a
    img = Image.new("L", (c.size, c.size))
    d = ImageDraw.Draw(img)
    S = c.size
    if nz.ecg:
        for _ in range(int(rng.integers(2, 5))):
            ex = a.cx + rng.uniform(-0.35, 0.35)
            ey = rng.uniform(0.15, 0.75)
            r = 0.018 * S
            d.ellipse([ex * S - r, ey * S - r, ex * S + r, ey * S + r], outline=150, width=max(1, S // 128))
            d.ellipse([ex * S - r / 3, ey * S - r / 3, ex * S + r / 3, ey * S + r / 3], fill=255)
            # A lead wire: a gentle arc out to the nearest side of the image.
            out_x = 1.05 if ex > a.cx else -0.05
            mid = ((ex + out_x) / 2 + rng.normal(0, 0.05), ey + rng.normal(0, 0.1))
            wire = [(ex * S, ey * S), (mid[0] * S, mid[1] * S), (out_x * S, (ey + rng.normal(0, 0.15)) * S)]
            d.line(wire, fill=170, width=max(1, S // 200), joint="curve")
    if nz.central_line:
        side = RIGHT if rng.random() < 0.7 else LEFT
        pts = [
            (a.cx + side * 0.3, a.clavicle_y + 0.03),
            (a.cx + side * 0.12, a.clavicle_y + 0.06),
            (a.cx - 0.03, a.hilum_y - 0.05),
            (a.cx - 0.035, a.hilum_y + rng.uniform(0.0, 0.05)),
        ]
        d.line([(px * S, py * S) for px, py in pts], fill=220, width=max(1, S // 128), joint="curve")
    if nz.ng_tube:
        tip = (a.cx + 0.12, a.dome_y[LEFT] + 0.12)
        pts = [(a.cx + 0.005, 0.0), (a.cx + 0.01, a.hilum_y), (a.cx + 0.03, a.dome_y[LEFT]), tip]
        d.line([(px * S, py * S) for px, py in pts], fill=200, width=max(1, S // 100), joint="curve")
    return np.asarray(img, np.float32) * (0.35 / 255)


@lru_cache(maxsize=4)
def _marker_pixels(letter: str, size: int) -> tuple[np.ndarray, int, int]:
    """The side marker's pixels (a small patch) and where it goes."""
    from PIL import ImageFont

    img = Image.new("L", (size, size))
    ImageDraw.Draw(img).text((size * 0.86, size * 0.06), letter, fill=230, font=ImageFont.load_default(max(8, size // 18)))
    arr = np.asarray(img).astype(np.int16)
    ys, xs = np.nonzero(arr)
    y0, x0 = int(ys.min()), int(xs.min())
    return arr[y0 : ys.max() + 1, x0 : xs.max() + 1], y0, x0


def stamp_marker(out: np.ndarray, letter: str, size: int) -> None:
    stamp, y0, x0 = _marker_pixels(letter, size)
    view = out[y0 : y0 + stamp.shape[0], x0 : x0 + stamp.shape[1]]
    np.maximum(view, stamp, out=view)
