"""SynthCXR's normal anatomy as layers on the render canvas: lungs (with heart and aortic knob in
front), soft tissue with the airway and gastric bubble, ribs, clavicles, spine. The bones take
an optional Fracture finding: the break and step are part of the bone they are in.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from convirt_fast.data.synthcxr import findings as F
from convirt_fast.data.synthcxr.anatomy import LEFT, RIGHT, Anatomy, body_outline, heart_outline, lateral_border_x, lung_outline
from convirt_fast.data.synthcxr.canvas import Canvas, circle, ellipse

N_RIBS = 10


def draw_lungs(a: Anatomy, lift: dict[int, float], size: int) -> dict[int, np.ndarray]:
    """Both lungs' masks from one drawing: the heart and the aortic knob, drawn over them,
    hide the lung behind them (in front of it, on the film)."""
    img = Image.new("L", (size, size))
    d = ImageDraw.Draw(img)
    for side, fill in ((RIGHT, 254), (LEFT, 255)):
        d.polygon((lung_outline(a, side, dome_lift=lift[side]) * size).ravel().tolist(), fill=fill)
    d.polygon((heart_outline(a) * size).ravel().tolist(), fill=0)
    # Aortic knob: a bulge of the mediastinum into the left upper lung.
    knob = circle(a.cx + a.mediastinum + 0.012, a.apex_y + 0.17, 0.026 * a.scale)
    d.polygon((knob * size).ravel().tolist(), fill=0)
    arr = np.asarray(img)
    return {RIGHT: (arr == 254).astype(np.float32), LEFT: (arr == 255).astype(np.float32)}


def draw_body(a: Anatomy, size: int) -> np.ndarray:
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
    bubble = ellipse(a.cx + 0.17 * a.scale, a.dome_y[LEFT] + 0.07, 0.05 * a.scale, 0.025)
    d.polygon((bubble * size).ravel().tolist(), fill=130)
    return np.asarray(img).astype(np.float32) * (1 / 255)


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


def draw_ribs(c: Canvas, fracture: F.Finding | None) -> np.ndarray:
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


def _rib_fracture(c: Canvas, f: F.Finding, phase: np.ndarray, dx: np.ndarray):
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


def draw_clavicles(c: Canvas, fracture: F.Finding | None) -> np.ndarray:
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


def draw_spine(c: Canvas) -> np.ndarray:
    a = c.a
    col = np.clip(1 - np.abs(c.x - a.cx) / (0.035 * a.scale), 0, 1) ** 0.3
    per = 0.048 * a.scale
    disc = ((c.y - a.apex_y) / per) % 1.0
    rows = 0.75 + 0.25 * (disc < 0.78)
    return col * rows
