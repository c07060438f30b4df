"""SynthCXR findings drawn on the render canvas: each changes what is left of the lung's air
(`air_keep`), adds air with no lung in it (`extra_air`), adds density (`add`) or hides lung
markings (`markings_keep`). The signatures themselves are described in findings.py.
"""

from __future__ import annotations

import numpy as np

from convirt_fast.data.synthcxr import findings as F
from convirt_fast.data.synthcxr.anatomy import LEFT, RIGHT, Anatomy, lateral_border_x, lung_outline
from convirt_fast.data.synthcxr.canvas import Canvas, mask, smooth_noise


def apply_volume_changes(a: Anatomy, by_name: dict[str, F.Finding]) -> None:
    if F.CARDIOMEGALY in by_name:
        a.ctr = by_name[F.CARDIOMEGALY].params["ctr"]
        a.heart_height *= 1.12
    if F.ATELECTASIS in by_name:
        at = by_name[F.ATELECTASIS]
        # Volume loss pulls the mediastinum toward the collapsed side.
        a.cx += at.sides[0] * at.params["shift"]


def _draw_cardiomegaly(c: Canvas, f: F.Finding, rng) -> None:
    pass  # the heart's size is set in apply_volume_changes; nothing else to draw


def _draw_effusion(c: Canvas, f: F.Finding, rng) -> None:
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


def _draw_pneumothorax(c: Canvas, f: F.Finding, rng) -> None:
    a, side = c.a, f.sides[0]
    hx, hy = a.hilum(side)
    k = f.params["collapse"]
    outline = lung_outline(a, side)
    # The lung shrinks toward its hilum, more from the apex and the chest wall.
    collapsed = np.stack([hx + (outline[:, 0] - hx) * k, hy + (outline[:, 1] - hy) * (k + 0.12)], 1)
    lung_in = mask(c.size, [collapsed])
    space = np.clip(c.lung[side] - lung_in, 0, 1)
    pleura = mask(c.size, [], lines=[(np.vstack([collapsed, collapsed[:1]]), 0.01)])
    c.extra_air += 0.1 * space
    c.markings_keep *= 1 - space
    # The visceral pleural line shows only where air lies outside it: its outer half.
    c.add += 0.2 * pleura * space
    c.air_keep *= 1 - 0.15 * lung_in * (c.x - a.cx) * side / a.half_width  # denser collapsed lung


def _draw_edema(c: Canvas, f: F.Finding, rng) -> None:
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
    c.add += 0.1 * mask(c.size, [], lines=lines) * (c.lung[RIGHT] + c.lung[LEFT])


def _lobe_region(c: Canvas, side: int, lobe: str) -> np.ndarray:
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


def _draw_pneumonia(c: Canvas, f: F.Finding, rng) -> None:
    side, lobe = f.sides[0], f.params["lobe"]
    region = _lobe_region(c, side, lobe)
    patchy = 0.8 + 0.2 * smooth_noise(rng, c.size)
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
    tubes = mask(c.size, [], lines=lines)
    c.extra_air += 0.22 * tubes * dense


def _draw_atelectasis(c: Canvas, f: F.Finding, rng) -> None:
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
    bands = mask(c.size, [], lines=lines) * c.lung[side]
    c.air_keep *= 1 - 0.9 * bands
    c.markings_keep *= 1 - bands


def _draw_fracture(c: Canvas, f: F.Finding, rng) -> None:
    pass  # drawn with the bones (draw_ribs, draw_clavicles)


FINDING_DRAW = {
    F.CARDIOMEGALY: _draw_cardiomegaly,
    F.EFFUSION: _draw_effusion,
    F.PNEUMOTHORAX: _draw_pneumothorax,
    F.EDEMA: _draw_edema,
    F.PNEUMONIA: _draw_pneumonia,
    F.ATELECTASIS: _draw_atelectasis,
    F.FRACTURE: _draw_fracture,
}
