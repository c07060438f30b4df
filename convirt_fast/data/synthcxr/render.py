"""SynthCXR rendering: anatomy + findings + nuisance -> one 8-bit grayscale radiograph.

The image is built as a density map (bright = attenuating) and windowed at the end:

    density = soft tissue - lung air * (what is left of the air after opacities)
              + bone (ribs, clavicles, spine) + lung markings + lines and devices

Large smooth shapes are PIL polygons (C speed); fields that vary per pixel (ribs, haze,
markings) are vectorised numpy on 1-D profiles broadcast to 2-D; the expensive random pieces
(vessel textures, pixel noise) come from per-size banks generated once from a fixed seed and
cropped at per-study offsets, so every image is still a pure function of the study's seed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from convirt_fast.data.synthcxr import findings as F
from convirt_fast.data.synthcxr.anatomy import LEFT, RIGHT, Anatomy
from convirt_fast.data.synthcxr.canvas import NOISE_LEVELS, NOISE_STEP, Canvas, crop, grid, noise_bank, vessel_bank
from convirt_fast.data.synthcxr.layers import draw_body, draw_clavicles, draw_lungs, draw_ribs, draw_spine
from convirt_fast.data.synthcxr.nuisance import Nuisance, draw_devices, pose, sample_nuisance, stamp_marker
from convirt_fast.data.synthcxr.signatures import FINDING_DRAW, apply_volume_changes

__all__ = ["Nuisance", "render", "sample_nuisance"]

LUNG_AIR = 0.36  # density removed by fully aerated lung


def render(a: Anatomy, found: list[F.Finding], nz: Nuisance, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One radiograph, (size, size) uint8."""
    by_name = {f.name: f for f in found}
    apply_volume_changes(a, by_name)
    out_size, size = size, max(32, size // 2)  # smooth content: render at half size, upsample
    g = grid(size)
    x, y = g[None, :], g[:, None]
    lift = {RIGHT: 0.0, LEFT: 0.0}
    if F.ATELECTASIS in by_name:
        at = by_name[F.ATELECTASIS]
        lift[at.sides[0]] = at.params["lift"]
    lung = draw_lungs(a, lift, size)
    body = draw_body(a, size)
    c = Canvas(
        size, a, x, y, lung,
        air_keep=np.ones((size, size), np.float32),
        extra_air=np.zeros((size, size), np.float32),
        add=np.zeros((size, size), np.float32),
        markings_keep=np.ones((size, size), np.float32),
    )  # fmt: skip
    for f in found:
        FINDING_DRAW[f.name](c, f, rng)

    lungs = lung[RIGHT] + lung[LEFT]
    # Soft tissue is thickest at the midline (1-D profile, broadcast).
    profile = np.sqrt(np.clip(1 - ((x - a.cx) / (a.half_width + 0.12)) ** 2, 0, 1))
    tissue = body * (0.48 + 0.16 * profile)
    # Aerated lung is thickest between the hilum and the chest wall.
    rel = np.clip((np.abs(x - a.cx) - a.mediastinum) / (a.half_width - a.mediastinum), 0, 1)
    thickness = LUNG_AIR * (0.75 + 0.25 * np.sin(np.pi * np.sqrt(rel)))
    air = lungs * thickness * c.air_keep + c.extra_air
    vessels = vessel_bank(size)
    k = int(rng.integers(len(vessels)))
    marks = sum(lung[sd] * crop(vessels[(k + i) % len(vessels)], size, *a.hilum(sd)) for i, sd in enumerate((RIGHT, LEFT)))
    fracture = by_name.get(F.FRACTURE)
    # Bone shows against aerated lung; over soft tissue it would saturate the window.
    bones = draw_ribs(c, fracture) * 0.1 + draw_clavicles(c, fracture) * (0.1 + 0.14 * lungs) + draw_spine(c) * 0.05
    density = tissue - air + bones + 0.2 * marks * c.markings_keep + c.add
    if nz.ecg or nz.central_line or nz.ng_tube:
        density += draw_devices(c, nz, rng)

    lo, hi = nz.window
    img = (density - lo) * (255 / (hi - lo)) * (1 + nz.heel * (y - 0.5) * 2)
    # Gamma through a lookup table on the 8-bit image: a float power costs more than the rest.
    lut = (np.linspace(0, 1, 256) ** nz.gamma * 255 + 0.5).astype(np.uint8)
    pil = Image.fromarray(lut[np.clip(img, 0, 255).astype(np.uint8)])
    pil = pose(pil, nz, out_size)
    # Quantum noise at full resolution, stronger where more photons were absorbed (bright),
    # in 16-bit integers: half the memory traffic of float32 at the largest size.
    out = np.asarray(pil).astype(np.int16)
    level = min(NOISE_LEVELS - 1, round(nz.noise / NOISE_STEP))
    oy, ox = rng.integers(0, out_size, 2)
    grain = noise_bank(out_size, level)[oy : oy + out_size, ox : ox + out_size]
    out += (grain * (64 + (out >> 1))) >> 7  # grain * (0.5 + out / 255), in fixed point
    if nz.marker:
        stamp_marker(out, nz.marker, out_size)
    return np.clip(out, 0, 255).astype(np.uint8)
