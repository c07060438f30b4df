"""SynthCXR findings: the 8 categories of the CheXpert 8x200 retrieval set and the parameters
of each finding's radiographic signature, sampled per study.

Signatures (drawn by `render.py`):
- Cardiomegaly: cardiac silhouette enlarged, cardiothoracic ratio 0.57-0.68 (normal 0.38-0.47).
- Pleural Effusion: dependent fluid blunting the costophrenic angle, with a meniscus (higher
  laterally), hiding the hemidiaphragm; one side or both.
- Pneumothorax: a lucent rim at the apex and lateral chest wall without lung markings, the
  visceral pleural line visible at the edge of the partly collapsed lung.
- Edema: bilateral perihilar (bat-wing) haze, indistinct vessels, Kerley B lines at the bases.
- Pneumonia: lobar consolidation (dense, homogeneous, one lobe) with air bronchograms.
- Atelectasis: plate-like (linear) opacities at a base with volume loss: the hemidiaphragm
  raised and the mediastinum shifted toward that side.
- Fracture: a cortical break with a step in a clavicle (displaced mid-shaft) or in two or
  three adjacent ribs.
- No Finding: normal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from convirt_fast.data.synthcxr.anatomy import LEFT, RIGHT

# Label column names, as in CheXpert / MIMIC-CXR's CheXpert labels.
ATELECTASIS = "Atelectasis"
CARDIOMEGALY = "Cardiomegaly"
EDEMA = "Edema"
FRACTURE = "Fracture"
EFFUSION = "Pleural Effusion"
PNEUMONIA = "Pneumonia"
PNEUMOTHORAX = "Pneumothorax"
NO_FINDING = "No Finding"
CATEGORIES = (ATELECTASIS, CARDIOMEGALY, EDEMA, FRACTURE, EFFUSION, PNEUMONIA, PNEUMOTHORAX, NO_FINDING)
FINDINGS = CATEGORIES[:-1]

LOBES = {RIGHT: ("upper", "middle", "lower"), LEFT: ("upper", "lower")}


@dataclass
class Finding:
    name: str
    sides: tuple[int, ...] = ()
    params: dict = field(default_factory=dict)


def sample_finding(name: str, rng: np.random.Generator) -> Finding:
    side = (RIGHT, LEFT)[int(rng.integers(2))]
    if name == CARDIOMEGALY:
        return Finding(name, (), {"ctr": float(rng.uniform(0.57, 0.68))})
    if name == EFFUSION:
        sides = (RIGHT, LEFT) if rng.random() < 0.3 else (side,)
        return Finding(name, sides, {"depth": {sd: float(rng.uniform(0.3, 0.48)) for sd in sides}})
    if name == PNEUMOTHORAX:
        return Finding(name, (side,), {"collapse": float(rng.uniform(0.58, 0.76))})
    if name == EDEMA:
        return Finding(name, (RIGHT, LEFT), {"severity": float(rng.uniform(0.65, 1.0)), "kerley": int(rng.integers(4, 9))})
    if name == PNEUMONIA:
        lobe = LOBES[side][int(rng.integers(len(LOBES[side])))]
        return Finding(name, (side,), {"lobe": lobe, "density": float(rng.uniform(0.75, 0.92))})
    if name == ATELECTASIS:
        return Finding(
            name,
            (side,),
            {"bands": int(rng.integers(2, 4)), "lift": float(rng.uniform(0.045, 0.075)), "shift": float(rng.uniform(0.012, 0.022))},
        )
    if name == FRACTURE:
        kind = "clavicle" if rng.random() < 0.75 else "ribs"
        return Finding(
            name,
            (side,),
            {
                "kind": kind,
                "first_rib": int(rng.integers(3, 7)),
                "ribs": int(rng.integers(3, 5)),
                "where": float(rng.uniform(0.55, 0.8)),  # fraction of the way to the chest wall
                "step": float(rng.uniform(0.5, 0.75)),
            },
        )
    raise ValueError(f"unknown finding {name!r}")


def compatible(names: list[str]) -> bool:
    """Combinations a single radiograph can show without one signature hiding another."""
    return not (PNEUMOTHORAX in names and EFFUSION in names)
