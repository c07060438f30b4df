"""SynthCXR anatomy: the normal PA chest radiograph's geometry, sampled per study.

All coordinates are normalised to the image (x right, y down, both in [0, 1]); the patient's
right lung is on the image's left (PA convention). `side = -1` is the patient's right (image
left), `side = +1` the patient's left (image right). Lengths scale with `scale` (body size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RIGHT, LEFT = -1, +1  # patient's sides, as image x directions


@dataclass
class Anatomy:
    cx: float
    """Midline x."""
    scale: float
    """Body size (1 = average adult on a 14 x 17 inch detector)."""
    half_width: float
    """Midline to the lateral lung border at its widest."""
    apex_y: float
    dome_y: dict[int, float]
    """Hemidiaphragm dome height per side (the right one sits higher)."""
    cp_depth: float
    """How far the costophrenic angle lies below the dome."""
    mediastinum: float
    """Half-width of the mediastinum where the lungs meet it."""
    ctr: float
    """Cardiothoracic ratio: heart width / inner thoracic width."""
    heart_height: float
    heart_shift: float
    """Fraction of the heart's width right of the midline (image left)."""
    hilum_y: float
    rib_y0: float
    rib_spacing: float
    rib_curve: float
    clavicle_y: float
    trachea_shift: float = 0.0

    def thoracic_width(self) -> float:
        return 2.0 * self.half_width

    def heart_width(self) -> float:
        return self.ctr * self.thoracic_width()

    def hilum(self, side: int) -> tuple[float, float]:
        return self.cx + side * 0.105 * self.scale, self.hilum_y

    def costophrenic_y(self, side: int) -> float:
        return self.dome_y[side] + self.cp_depth


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    s = float(rng.uniform(0.86, 1.04))
    apex = float(rng.uniform(0.10, 0.15))
    dome_r = float(rng.uniform(0.64, 0.71))
    return Anatomy(
        cx=float(0.5 + rng.normal(0, 0.012)),
        scale=s,
        half_width=0.37 * s * float(rng.uniform(0.96, 1.04)),
        apex_y=apex,
        dome_y={RIGHT: dome_r, LEFT: dome_r + float(rng.uniform(0.015, 0.04))},
        cp_depth=float(rng.uniform(0.07, 0.095)) * s,
        mediastinum=0.05 * s,
        ctr=float(rng.uniform(0.38, 0.47)),
        heart_height=float(rng.uniform(0.13, 0.15)) * s,
        heart_shift=float(rng.uniform(0.30, 0.38)),
        hilum_y=float(rng.uniform(0.38, 0.43)),
        rib_y0=apex - 0.035,
        rib_spacing=float(rng.uniform(0.062, 0.07)) * (dome_r - apex) / 0.55,
        rib_curve=float(rng.uniform(1.3, 1.8)),
        clavicle_y=apex + float(rng.uniform(0.075, 0.1)),
    )


def _medial_profile(t: np.ndarray) -> np.ndarray:
    """0 at the apex, 1 once the medial border has reached the mediastinum (30% down)."""
    u = np.clip(t / 0.3, 0, 1)
    return np.sqrt(1 - (1 - u) ** 2)


# Outline parameters, fixed: the per-study work is a few scalar-times-array operations.
_N = 28
_T = np.linspace(0, 1, _N)
_LATERAL = np.sqrt(1 - (1 - _T) ** 2)  # quarter ellipse: horizontal at the apex, vertical at the angle
_DOME = np.linspace(1, 0, _N)[1:]  # lateral (1) to medial (0)
_TM = np.linspace(1, 0, _N)[1:]
_MEDIAL = _medial_profile(_TM)


def lung_outline(a: Anatomy, side: int, *, dome_lift: float = 0.0) -> np.ndarray:
    """Closed polygon (n_points, 2) of one lung: apex, lateral border down to a sharp
    costophrenic angle, the diaphragm dome, then the medial border back up."""
    apex_off = 0.15 * a.scale
    dome = a.dome_y[side] - dome_lift
    cp_y = dome + a.cp_depth
    out = np.empty((3 * _N - 2, 2))
    lat, dom, med = out[:_N], out[_N : 2 * _N - 1], out[2 * _N - 1 :]
    lat[:, 0] = a.cx + side * (apex_off + (a.half_width - apex_off) * _LATERAL)
    lat[:, 1] = a.apex_y + (cp_y - a.apex_y) * _T
    # Dome: a parabola from the costophrenic angle over its peak (mid-hemithorax) to the heart.
    xs = a.mediastinum + (a.half_width - a.mediastinum) * _DOME
    peak = 0.5 * a.half_width
    k = a.cp_depth / (a.half_width - peak) ** 2
    dom[:, 0] = a.cx + side * xs
    dom[:, 1] = dome + k * (xs - peak) ** 2
    med_bottom = dome + k * (a.mediastinum - peak) ** 2
    med[:, 0] = a.cx + side * (apex_off - (apex_off - a.mediastinum) * _MEDIAL)
    med[:, 1] = a.apex_y + (med_bottom - a.apex_y) * _TM
    return out


def lateral_border_x(a: Anatomy, side: int, y):
    """|x - cx| of the lateral lung border at heights y (0 above the apex); float or array."""
    cp_y = a.costophrenic_y(side)
    apex_off = 0.15 * a.scale
    if np.ndim(y) == 0:
        y = float(y)
        if y < a.apex_y:
            return 0.0
        t = min(1.0, (y - a.apex_y) / (cp_y - a.apex_y))
        return apex_off + (a.half_width - apex_off) * float(np.sqrt(1 - (1 - t) ** 2))
    t = np.clip((y - a.apex_y) / (cp_y - a.apex_y), 0, 1)
    w = apex_off + (a.half_width - apex_off) * np.sqrt(1 - (1 - t) ** 2)
    return np.where(y < a.apex_y, 0.0, w)


_HEART_TH = np.linspace(0, 2 * np.pi, 40, endpoint=False)
_HEART_TILT = np.deg2rad(18)  # long axis runs from upper right to lower left (patient)
_HEART_COS, _HEART_SIN = np.cos(_HEART_TH), np.sin(_HEART_TH)


def heart_outline(a: Anatomy) -> np.ndarray:
    """The cardiac silhouette: a tilted ellipse whose apex points down and to the patient's
    left, its lower part hidden below the left hemidiaphragm."""
    w = a.heart_width()
    hx = a.cx + w * (0.5 - a.heart_shift)
    hh = a.heart_height
    hy = a.dome_y[LEFT] - 0.55 * hh
    ex, ey = 0.5 * w * _HEART_COS, hh * _HEART_SIN
    ct, st = np.cos(_HEART_TILT), np.sin(_HEART_TILT)
    x = ex * ct - ey * st
    y = hy + ex * st + ey * ct
    # The ellipse is tilted, so rescale x to keep the intended transverse diameter (the CTR).
    x = hx + x * (w / (x.max() - x.min()))
    return np.stack([x, y], 1)


def body_outline(a: Anatomy) -> np.ndarray:
    """Neck, shoulders, chest wall and upper abdomen."""
    cx, s, w = a.cx, a.scale, a.half_width
    half = [
        (0.085 * s, -0.02),
        (0.10 * s, 0.04),
        (0.30 * s, 0.075),
        (0.46 * s, 0.12),
        (0.56, 0.22),
        (w + 0.075 * s, 0.40),
        (w + 0.075 * s, 0.75),
        (w + 0.05 * s, 1.02),
    ]
    right = [(cx - dx, y) for dx, y in half]
    left = [(cx + dx, y) for dx, y in reversed(half)]
    return np.array(right + left)
