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

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from convirt_fast.data.synthcxr import findings as F
from convirt_fast.data.synthcxr.anatomy import (
    LEFT,
    RIGHT,
    Anatomy,
    body_outline,
    heart_outline,
    lateral_border_x,
    lung_outline,
)

LUNG_AIR = 0.36  # density removed by fully aerated lung
N_RIBS = 10


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


# ---------------------------------------------------------------------------------------------
# Banks: built once per image size from fixed seeds.


@lru_cache(maxsize=4)
def _vessel_bank(size: int, count: int = 6) -> np.ndarray:
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
def _noise_bank(size: int, level: int) -> np.ndarray:
    """(2*size)^2 Gaussian grain in grey levels at sigma = level * NOISE_STEP * 255, int16."""
    unit = np.random.default_rng(4321).standard_normal((2 * size, 2 * size), dtype=np.float32)
    return np.rint(unit * (level * NOISE_STEP * 255)).astype(np.int16)


@lru_cache(maxsize=4)
def _grid(size: int) -> np.ndarray:
    return (np.arange(size, dtype=np.float32) + 0.5) / size


# ---------------------------------------------------------------------------------------------
# Helpers.


def _mask(size: int, polygons, *, fill: int = 255, lines=()) -> np.ndarray:
    img = Image.new("L", (size, size))
    d = ImageDraw.Draw(img)
    for poly in polygons:
        d.polygon((np.asarray(poly) * size).ravel().tolist(), fill=fill)
    for pts, width in lines:
        d.line((np.asarray(pts) * size).ravel().tolist(), fill=fill, width=max(1, round(width * size)), joint="curve")
    return np.asarray(img).astype(np.float32) * (1.0 / 255.0)


def _crop(bank: np.ndarray, size: int, cx: float, cy: float) -> np.ndarray:
    """The size x size window of a (2*size)-square bank whose centre lands at (cx, cy)."""
    ox = int(np.clip(round(size - cx * size), 0, size))
    oy = int(np.clip(round(size - cy * size), 0, size))
    return bank[oy : oy + size, ox : ox + size]


def _smooth_noise(rng: np.random.Generator, size: int, cells: int = 8) -> np.ndarray:
    """Blobby low-frequency texture in [0, 1] (patchy consolidation)."""
    small = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), np.float32) * (1 / 255)


# ---------------------------------------------------------------------------------------------
# Rendering.


@dataclass
class _Canvas:
    size: int
    a: Anatomy
    x: np.ndarray  # (1, S)
    y: np.ndarray  # (S, 1)
    lung: dict[int, np.ndarray]
    air_keep: np.ndarray  # multiplies lung air: 1 aerated, 0 fully opacified
    extra_air: np.ndarray  # air with no lung in it (pneumothorax)
    add: np.ndarray  # density added on top (lines, bands)
    markings_keep: np.ndarray


def render(a: Anatomy, found: list[F.Finding], nz: Nuisance, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One radiograph, (size, size) uint8."""
    by_name = {f.name: f for f in found}
    _apply_volume_changes(a, by_name)
    out_size, size = size, max(32, size // 2)  # smooth content: render at half size, upsample
    g = _grid(size)
    x, y = g[None, :], g[:, None]
    lift = {RIGHT: 0.0, LEFT: 0.0}
    if F.ATELECTASIS in by_name:
        at = by_name[F.ATELECTASIS]
        lift[at.sides[0]] = at.params["lift"]
    lung = _lungs(a, lift, size)
    body = _body(a, size)
    c = _Canvas(
        size, a, x, y, lung,
        air_keep=np.ones((size, size), np.float32),
        extra_air=np.zeros((size, size), np.float32),
        add=np.zeros((size, size), np.float32),
        markings_keep=np.ones((size, size), np.float32),
    )  # fmt: skip
    for f in found:
        _FINDING_DRAW[f.name](c, f, rng)

    lungs = lung[RIGHT] + lung[LEFT]
    # Soft tissue is thickest at the midline (1-D profile, broadcast).
    profile = np.sqrt(np.clip(1 - ((x - a.cx) / (a.half_width + 0.12)) ** 2, 0, 1))
    tissue = body * (0.48 + 0.16 * profile)
    # Aerated lung is thickest between the hilum and the chest wall.
    rel = np.clip((np.abs(x - a.cx) - a.mediastinum) / (a.half_width - a.mediastinum), 0, 1)
    thickness = LUNG_AIR * (0.75 + 0.25 * np.sin(np.pi * np.sqrt(rel)))
    air = lungs * thickness * c.air_keep + c.extra_air
    vessels = _vessel_bank(size)
    k = int(rng.integers(len(vessels)))
    marks = sum(lung[sd] * _crop(vessels[(k + i) % len(vessels)], size, *a.hilum(sd)) for i, sd in enumerate((RIGHT, LEFT)))
    fracture = by_name.get(F.FRACTURE)
    # Bone shows against aerated lung; over soft tissue it would saturate the window.
    bones = _ribs(c, fracture) * 0.1 + _clavicles(c, fracture) * (0.1 + 0.14 * lungs) + _spine(c) * 0.05
    density = tissue - air + bones + 0.2 * marks * c.markings_keep + c.add
    if nz.ecg or nz.central_line or nz.ng_tube:
        density += _devices(c, nz, rng)

    lo, hi = nz.window
    img = (density - lo) * (255 / (hi - lo)) * (1 + nz.heel * (y - 0.5) * 2)
    # Gamma through a lookup table on the 8-bit image: a float power costs more than the rest.
    lut = (np.linspace(0, 1, 256) ** nz.gamma * 255 + 0.5).astype(np.uint8)
    pil = Image.fromarray(lut[np.clip(img, 0, 255).astype(np.uint8)])
    pil = _pose(pil, nz, out_size)
    # Quantum noise at full resolution, stronger where more photons were absorbed (bright),
    # in 16-bit integers: half the memory traffic of float32 at the largest size.
    out = np.asarray(pil).astype(np.int16)
    level = min(NOISE_LEVELS - 1, round(nz.noise / NOISE_STEP))
    oy, ox = rng.integers(0, out_size, 2)
    grain = _noise_bank(out_size, level)[oy : oy + out_size, ox : ox + out_size]
    out += (grain * (64 + (out >> 1))) >> 7  # grain * (0.5 + out / 255), in fixed point
    if nz.marker:
        _marker(out, nz.marker, out_size)
    return np.clip(out, 0, 255).astype(np.uint8)


def _lungs(a: Anatomy, lift: dict[int, float], size: int) -> dict[int, np.ndarray]:
    """Both lungs' masks from one drawing: the heart and the aortic knob, drawn over them,
    hide the lung behind them (in front of it, on the film)."""
    img = Image.new("L", (size, size))
    d = ImageDraw.Draw(img)
    for side, fill in ((RIGHT, 254), (LEFT, 255)):
        d.polygon((lung_outline(a, side, dome_lift=lift[side]) * size).ravel().tolist(), fill=fill)
    d.polygon((heart_outline(a) * size).ravel().tolist(), fill=0)
    # Aortic knob: a bulge of the mediastinum into the left upper lung.
    knob = _circle(a.cx + a.mediastinum + 0.012, a.apex_y + 0.17, 0.026 * a.scale)
    d.polygon((knob * size).ravel().tolist(), fill=0)
    arr = np.asarray(img)
    return {RIGHT: (arr == 254).astype(np.float32), LEFT: (arr == 255).astype(np.float32)}


def _body(a: Anatomy, size: int) -> np.ndarray:
    """Soft tissue, with the air of the trachea, main bronchi and gastric bubble taken out."""
    img = Image.new("L", (size, size))
    d = ImageDraw.Draw(img)
    d.polygon((body_outline(a) * size).ravel().tolist(), fill=255)
    tx = a.cx + a.trachea_shift
    carina = (tx, a.hilum_y - 0.06)
    w = max(1, round(0.026 * a.scale * size))
    for pts, width in (
        ([(tx, -0.05), carina], w),
        ([carina, (a.cx - 0.07 * a.scale, a.hilum_y - 0.01)], round(w * 0.7)),
        ([carina, (a.cx + 0.08 * a.scale, a.hilum_y + 0.01)], round(w * 0.7)),
    ):
        d.line((np.asarray(pts) * size).ravel().tolist(), fill=212, width=max(1, width), joint="curve")
    bubble = _ellipse(a.cx + 0.17 * a.scale, a.dome_y[LEFT] + 0.07, 0.05 * a.scale, 0.025)
    d.polygon((bubble * size).ravel().tolist(), fill=130)
    return np.asarray(img).astype(np.float32) * (1 / 255)


def _circle(cx: float, cy: float, r: float, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _pose(img: Image.Image, nz: Nuisance, size: int) -> Image.Image:
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


def _apply_volume_changes(a: Anatomy, by_name: dict[str, F.Finding]) -> None:
    if F.CARDIOMEGALY in by_name:
        a.ctr = by_name[F.CARDIOMEGALY].params["ctr"]
        a.heart_height *= 1.12
    if F.ATELECTASIS in by_name:
        at = by_name[F.ATELECTASIS]
        # Volume loss pulls the mediastinum toward the collapsed side.
        a.cx += at.sides[0] * at.params["shift"]


STEPS = 32  # samples per rib spacing in the rib profile tables


@lru_cache(maxsize=1)
def _rib_tables() -> tuple[np.ndarray, np.ndarray]:
    """Bone density against rib phase (STEPS samples per rib, one empty rib of padding on each
    side, so out-of-range phases index zeros): posterior ribs (a triangle across the rib whose
    cortex, its edges, is brighter than the medulla) and the fainter anterior ribs."""
    frac = (np.arange(STEPS) + 0.5) / STEPS
    band = np.clip(1 - np.abs(frac - 0.16) / 0.16, 0, 1)
    posterior = (band > 0) * (0.6 + 0.8 * (1 - band) ** 2)
    anterior = 0.35 * (frac < 0.22)
    pad = np.zeros(STEPS)
    post = np.concatenate([pad, np.tile(posterior, N_RIBS), pad]).astype(np.float32)
    ant = np.concatenate([pad, pad, np.tile(anterior, 6), pad]).astype(np.float32)  # ribs 2-7
    return post, ant


def _ribs(c: _Canvas, fracture: F.Finding | None) -> np.ndarray:
    """Posterior ribs: arcs from the spine that rise slightly, then curve down to the chest
    wall. A rib's phase (rib spacings below the first rib, along the arc) indexes a profile
    table, which gives all ribs of both sides in a few array operations."""
    a, x, y = c.a, c.x, c.y
    dx = np.abs(x - a.cx)
    arc = a.rib_curve * ((dx - 0.1) ** 2 - 0.01)
    phase = (y - a.rib_y0 - arc) * (1 / a.rib_spacing)
    gap = None
    if fracture is not None and fracture.params["kind"] == "ribs":
        phase, gap = _rib_fracture(c, fracture, phase, dx)
    post, ant_table = _rib_tables()
    idx = np.clip(((phase + 1) * STEPS).astype(np.int32), 0, len(post) - 1)
    bone = post[idx]
    # Anterior ribs: fainter, running down toward the midline (lateral half of the chest).
    ant = (y - a.rib_y0 - 0.3 * (0.38 - dx)) * (STEPS / (a.rib_spacing * 1.3)) + STEPS
    ant_idx = np.clip(ant.astype(np.int32), 0, len(ant_table) - 1)
    bone += ant_table[ant_idx] * (dx > 0.12)
    # The left hemithorax reaches lower (its dome sits lower); one extent serves both sides.
    reach = np.where(y < a.costophrenic_y(RIGHT) + 0.04, lateral_border_x(a, LEFT, y) + 0.035, 0.0)
    inside = (dx < reach) & (dx > 0.035)
    # Over the lungs ribs stand out; over soft tissue they barely do.
    bone *= inside * (0.35 + 0.65 * (c.lung[RIGHT] + c.lung[LEFT]))
    if gap is not None:
        bone *= 1 - gap
    return bone


def _rib_fracture(c: _Canvas, f: F.Finding, phase: np.ndarray, dx: np.ndarray):
    """Break ribs first_rib.. along a slightly oblique line; the lateral fragments step down."""
    a, side = c.a, f.sides[0]
    on_side = (c.x - a.cx) * side > 0
    k0, n = f.params["first_rib"], f.params["ribs"]
    y_mid = a.rib_y0 + (k0 + n / 2) * a.rib_spacing
    x_break = f.params["where"] * lateral_border_x(a, side, np.array(y_mid)) + 0.01 * (c.y - y_mid) / a.rib_spacing
    beyond = (dx > x_break) & on_side
    ribs = (phase >= k0) & (phase < k0 + n) & on_side
    stepped = phase - f.params["step"] * (beyond & ribs)
    gap = (np.abs(dx - x_break) < 0.016) & ribs
    return stepped, gap.astype(np.float32)


def _clavicle_points(a: Anatomy, side: int) -> np.ndarray:
    s = a.scale
    return np.array(
        [
            (a.cx + side * 0.04 * s, a.clavicle_y + 0.04),
            (a.cx + side * 0.16 * s, a.clavicle_y + 0.015),
            (a.cx + side * 0.28 * s, a.clavicle_y),
            (a.cx + side * 0.40 * s, a.clavicle_y - 0.035),
        ]
    )


def _clavicles(c: _Canvas, fracture: F.Finding | None) -> np.ndarray:
    a, s = c.a, c.a.scale
    width = 0.036 * s
    lines = []
    for side in (RIGHT, LEFT):
        pts = _clavicle_points(a, side)
        if fracture is not None and fracture.params["kind"] == "clavicle" and fracture.sides[0] == side:
            # Mid-shaft break: the lateral fragment drops by about a shaft's width and overrides.
            brk = pts[1] + (pts[2] - pts[1]) * (fracture.params["where"] - 0.3)
            drop = np.array([side * -0.012, fracture.params["step"] * 3.0 * width])
            gap = (pts[2] - pts[1]) / np.linalg.norm(pts[2] - pts[1]) * 0.016
            lines.append((np.array([pts[0], pts[1], brk - gap]), width))
            lateral = np.array([brk + gap * 0.3, pts[2], pts[3]]) + drop
            lateral[-1] -= drop * 0.6  # the acromial end stays roughly in place
            lines.append((lateral, width * 0.95))
        else:
            lines.append((pts, width))
    img = Image.new("L", (c.size, c.size))
    d = ImageDraw.Draw(img)
    for fill, k in ((255, 1.0), (170, 0.45)):  # cortical rim brighter than the medulla
        for pts, w in lines:
            d.line((np.asarray(pts) * c.size).ravel().tolist(), fill=fill, width=max(1, round(w * k * c.size)), joint="curve")
    return np.asarray(img).astype(np.float32) * (1 / 255)


def _spine(c: _Canvas) -> np.ndarray:
    a = c.a
    col = np.clip(1 - np.abs(c.x - a.cx) / (0.035 * a.scale), 0, 1) ** 0.3
    per = 0.048 * a.scale
    disc = ((c.y - a.apex_y) / per) % 1.0
    rows = 0.75 + 0.25 * (disc < 0.78)
    return col * rows


# ---------------------------------------------------------------------------------------------
# Findings.


def _draw_cardiomegaly(c: _Canvas, f: F.Finding, rng) -> None:
    pass  # the heart's size is set in _apply_volume_changes; nothing else to draw


def _draw_effusion(c: _Canvas, f: F.Finding, rng) -> None:
    a = c.a
    for side in f.sides:
        depth = f.params["depth"][side] * (a.costophrenic_y(side) - a.apex_y)
        level = a.costophrenic_y(side) - depth
        rel = np.clip((c.x - a.cx) * side / a.half_width, 0, 1)  # 0 medial, 1 lateral
        # Meniscus: the fluid climbs the lateral chest wall.
        top = level + 0.25 * depth * (1 - rel**2) - 0.2 * depth * rel**4
        fluid = np.clip((c.y - top) / (0.015 + 0.05 * (1 - rel)), 0, 1) * ((c.x - a.cx) * side > 0)
        c.air_keep *= 1 - 0.97 * fluid
        c.markings_keep *= 1 - fluid


def _draw_pneumothorax(c: _Canvas, f: F.Finding, rng) -> None:
    a, side = c.a, f.sides[0]
    hx, hy = a.hilum(side)
    k = f.params["collapse"]
    outline = lung_outline(a, side)
    # The lung shrinks toward its hilum, more from the apex and the chest wall.
    collapsed = np.stack([hx + (outline[:, 0] - hx) * k, hy + (outline[:, 1] - hy) * (k + 0.12)], 1)
    lung_in = _mask(c.size, [collapsed])
    space = np.clip(c.lung[side] - lung_in, 0, 1)
    pleura = _mask(c.size, [], lines=[(np.vstack([collapsed, collapsed[:1]]), 0.01)])
    c.extra_air += 0.1 * space
    c.markings_keep *= 1 - space
    # The visceral pleural line shows only where air lies outside it: its outer half.
    c.add += 0.2 * pleura * space
    c.air_keep *= 1 - 0.15 * lung_in * (c.x - a.cx) * side / a.half_width  # denser collapsed lung


def _draw_edema(c: _Canvas, f: F.Finding, rng) -> None:
    a = c.a
    sev = f.params["severity"]
    haze = np.zeros_like(c.air_keep)
    for side in (RIGHT, LEFT):
        hx, hy = a.hilum(side)
        gx = np.exp(-(((c.x - hx) / (0.17 * a.scale)) ** 2))
        gy = np.exp(-(((c.y - hy - 0.03) / (0.17 * a.scale)) ** 2))
        haze += gx * gy
    c.air_keep *= 1 - 0.75 * sev * np.clip(haze, 0, 1)
    c.markings_keep *= 1 - 0.5 * np.clip(haze, 0, 1)
    lines = []
    for _ in range(f.params["kerley"]):
        side = RIGHT if rng.random() < 0.5 else LEFT
        yy = a.costophrenic_y(side) - rng.uniform(0.04, 0.2)
        xl = float(lateral_border_x(a, side, np.array(yy)))
        length = rng.uniform(0.03, 0.05)
        x0 = a.cx + side * (xl - 0.004)
        lines.append((np.array([(x0, yy), (x0 - side * length, yy + rng.normal(0, 0.003))]), 0.005))
    c.add += 0.1 * _mask(c.size, [], lines=lines) * (c.lung[RIGHT] + c.lung[LEFT])


def _lobe_region(c: _Canvas, side: int, lobe: str) -> np.ndarray:
    a = c.a
    fissure = a.hilum_y + 0.005  # horizontal (minor) fissure on the right
    y = c.y
    if lobe == "upper":
        # Sharp lower border along the fissure; the upper lobe fills the apex.
        band = np.clip((fissure - y) / 0.006, 0, 1)
    elif lobe == "middle":
        band = np.clip((y - fissure) / 0.006, 0, 1) * np.clip((fissure + 0.16 - y) / 0.05, 0, 1)
    else:
        band = np.clip((y - fissure + 0.02) / 0.07, 0, 1)
    return band * c.lung[side]


def _draw_pneumonia(c: _Canvas, f: F.Finding, rng) -> None:
    side, lobe = f.sides[0], f.params["lobe"]
    region = _lobe_region(c, side, lobe)
    patchy = 0.8 + 0.2 * _smooth_noise(rng, c.size)
    dense = np.clip(region * f.params["density"] * patchy, 0, 1)
    c.air_keep *= 1 - dense
    c.markings_keep *= 1 - dense
    # Air bronchograms: branching lucent tubes inside the consolidation.
    a = c.a
    hx, hy = a.hilum(side)
    lines = []
    for _ in range(5):
        ang = rng.uniform(-0.9, 0.9) + (-np.pi / 2 if lobe == "upper" else np.pi / 2)
        ang = ang + (0 if side == LEFT else 0)
        ln = rng.uniform(0.1, 0.2)
        p0 = np.array([hx, hy])
        p1 = p0 + ln * 0.5 * np.array([side * abs(np.cos(ang)) * 0.9, np.sin(ang)])
        p2 = p1 + ln * 0.5 * np.array([side * abs(np.cos(ang + rng.normal(0, 0.4))), np.sin(ang + rng.normal(0, 0.4))])
        p3 = p1 + ln * 0.4 * np.array([side * abs(np.cos(ang - 0.5)), np.sin(ang - 0.5)])
        lines += [(np.array([p0, p1, p2]), 0.008), (np.array([p1, p3]), 0.006)]
    tubes = _mask(c.size, [], lines=lines)
    c.extra_air += 0.22 * tubes * dense


def _draw_atelectasis(c: _Canvas, f: F.Finding, rng) -> None:
    a, side = c.a, f.sides[0]
    lines = []
    base = a.dome_y[side] - f.params["lift"]
    for i in range(f.params["bands"]):
        yy = base - 0.045 - i * rng.uniform(0.05, 0.075)
        xl = float(lateral_border_x(a, side, np.array(yy)))
        x0 = a.cx + side * rng.uniform(0.1, 0.2) * a.scale
        x1 = a.cx + side * (xl - rng.uniform(0.02, 0.06))
        tilt = rng.normal(0, 0.02)
        lines.append((np.array([(x0, yy - tilt), (x1, yy + tilt)]), rng.uniform(0.02, 0.03)))
    bands = _mask(c.size, [], lines=lines) * c.lung[side]
    c.air_keep *= 1 - 0.9 * bands
    c.markings_keep *= 1 - bands


def _draw_fracture(c: _Canvas, f: F.Finding, rng) -> None:
    pass  # drawn with the bones (_ribs, _clavicles)


_FINDING_DRAW = {
    F.CARDIOMEGALY: _draw_cardiomegaly,
    F.EFFUSION: _draw_effusion,
    F.PNEUMOTHORAX: _draw_pneumothorax,
    F.EDEMA: _draw_edema,
    F.PNEUMONIA: _draw_pneumonia,
    F.ATELECTASIS: _draw_atelectasis,
    F.FRACTURE: _draw_fracture,
}


# ---------------------------------------------------------------------------------------------
# Devices and markers: nuisance, independent of the labels.


def _devices(c: _Canvas, nz: Nuisance, rng) -> np.ndarray:
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
def _marker_stamp(letter: str, size: int) -> tuple[np.ndarray, int, int]:
    """The side marker's pixels (a small patch) and where it goes."""
    from PIL import ImageFont

    img = Image.new("L", (size, size))
    ImageDraw.Draw(img).text((size * 0.86, size * 0.06), letter, fill=230, font=ImageFont.load_default(max(8, size // 18)))
    arr = np.asarray(img).astype(np.int16)
    ys, xs = np.nonzero(arr)
    y0, x0 = int(ys.min()), int(xs.min())
    return arr[y0 : ys.max() + 1, x0 : xs.max() + 1], y0, x0


def _marker(out: np.ndarray, letter: str, size: int) -> None:
    stamp, y0, x0 = _marker_stamp(letter, size)
    view = out[y0 : y0 + stamp.shape[0], x0 : x0 + stamp.shape[1]]
    np.maximum(view, stamp, out=view)
