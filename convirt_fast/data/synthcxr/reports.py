"""SynthCXR reports: MIMIC-style text ("FINDINGS: ...\\n\\nIMPRESSION: ...") written from
paraphrase banks, with negations of absent findings and normal statements that never contradict
the image; and the held-out text queries for retrieval, which never occur in a training report
(tests check it).

Placeholders: {side} right/left, {Side} Right/Left, {lobe} upper/middle/lower, {rib_a}/{rib_b}
ordinal numbers of the first and last broken rib.
"""

from __future__ import annotations

import numpy as np

from convirt_fast.data.synthcxr import findings as F
from convirt_fast.data.synthcxr.anatomy import LEFT, RIGHT

POSITIVE = {
    F.CARDIOMEGALY: [
        "The heart is enlarged.",
        "Cardiomegaly is present.",
        "There is moderate enlargement of the cardiac silhouette.",
        "Heart size is enlarged.",
        "Marked enlargement of the heart is noted.",
        "The cardiomediastinal silhouette is enlarged.",
        "The heart size is moderately enlarged.",
        "Moderate cardiomegaly is seen.",
    ],
    F.EFFUSION: [
        "There is a {side} pleural effusion.",
        "{Side} pleural effusion is present.",
        "Blunting of the {side} costophrenic angle consistent with pleural effusion.",
        "A moderate {side} pleural effusion is seen.",
        "Layering {side} pleural fluid with a meniscus.",
        "{Side} pleural effusion obscures the hemidiaphragm.",
    ],
    F.PNEUMOTHORAX: [
        "There is a {side} pneumothorax.",
        "A {side} apical pneumothorax is present.",
        "{Side} pneumothorax with a visible pleural line.",
        "A moderate {side} pneumothorax is seen.",
        "{Side} apical and lateral pneumothorax.",
        "Lucency without lung markings at the {side} apex consistent with pneumothorax.",
    ],
    F.EDEMA: [
        "There is pulmonary edema.",
        "Moderate pulmonary edema is present.",
        "Perihilar haziness consistent with pulmonary edema.",
        "Interstitial edema with Kerley B lines.",
        "Bilateral perihilar opacities compatible with edema.",
        "Pulmonary vascular congestion with interstitial edema.",
    ],
    F.PNEUMONIA: [
        "{Side} {lobe} lobe consolidation concerning for pneumonia.",
        "There is a {side} {lobe} lobe pneumonia.",
        "Focal consolidation in the {side} {lobe} lobe with air bronchograms.",
        "Airspace opacity in the {side} {lobe} lobe consistent with pneumonia.",
        "Dense consolidation of the {side} {lobe} lobe.",
    ],
    F.ATELECTASIS: [
        "Plate-like atelectasis at the {side} base.",
        "There is {side} basilar atelectasis.",
        "Linear opacity at the {side} lung base consistent with atelectasis.",
        "{Side} lower lung atelectasis with volume loss.",
        "Elevation of the {side} hemidiaphragm with adjacent atelectasis.",
        "Discoid atelectasis in the {side} lower zone.",
    ],
    F.FRACTURE: [],  # depends on the site: FRACTURE_SITE below
}

FRACTURE_SITE = {
    "clavicle": [
        "There is a displaced fracture of the {side} clavicle.",
        "Acute {side} clavicular fracture.",
        "Fracture of the mid {side} clavicle with inferior displacement.",
        "Displaced midshaft {side} clavicle fracture.",
    ],
    "ribs": [
        "Acute fractures of the {side} {rib_a} through {rib_b} ribs.",
        "Displaced {side} lateral rib fractures are seen.",
        "There are fractures of the {side} {rib_a} to {rib_b} ribs.",
        "Multiple {side} rib fractures with step-off.",
    ],
}

# Impressions of >= 3 tokens: shorter ones ("Cardiomegaly.") would be dropped by the index.
IMPRESSION = {
    F.CARDIOMEGALY: ["Cardiomegaly is noted.", "Moderate cardiomegaly is seen.", "The heart is enlarged."],
    F.EFFUSION: ["{Side} pleural effusion.", "Moderate {side} pleural effusion."],
    F.PNEUMOTHORAX: ["{Side} pneumothorax is present.", "Moderate {side} pneumothorax."],
    F.EDEMA: ["Moderate pulmonary edema.", "Findings consistent with pulmonary edema."],
    F.PNEUMONIA: ["{Side} {lobe} lobe pneumonia.", "Pneumonia in the {side} {lobe} lobe."],
    F.ATELECTASIS: ["{Side} basilar atelectasis.", "Atelectasis at the {side} base."],
    F.FRACTURE: ["Acute {side} {site} fracture.", "{Side} {site} fracture."],
}
NORMAL_IMPRESSION = [
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
    "No acute intrathoracic abnormality.",
]

# Negations are sparser than in MIMIC (35% per absent finding) and never word-for-word the
# positive held-out queries with "no" added: the default CPU run has minutes to learn them.
NEGATION = {
    F.CARDIOMEGALY: ["Heart size is normal.", "The heart is normal in size.", "Normal heart size.", "The cardiomediastinal silhouette is within normal limits."],
    F.EFFUSION: ["No pleural effusion.", "There is no pleural effusion.", "The costophrenic angles are sharp."],
    F.PNEUMOTHORAX: ["No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."],
    F.EDEMA: ["No pulmonary edema.", "There is no evidence of pulmonary edema.", "Pulmonary vascularity is normal."],
    F.PNEUMONIA: ["No focal consolidation.", "No focal consolidation to suggest pneumonia.", "There is no consolidation."],
    F.ATELECTASIS: ["No atelectasis.", "There is no atelectasis.", "The lungs are well expanded."],
    F.FRACTURE: ["No acute osseous abnormality.", "No fracture.", "The osseous structures are intact."],
}
NEGATION_P = 0.35
PARENCHYMAL = {F.EDEMA, F.PNEUMONIA, F.ATELECTASIS, F.PNEUMOTHORAX, F.EFFUSION}
CLEAR_LUNGS = ["The lungs are clear.", "Both lungs are clear.", "The lungs are clear without focal opacity."]
ALWAYS_NORMAL = ["The mediastinal contours are normal.", "The hilar contours are unremarkable.", "The trachea is midline."]

INDICATION = [
    "___ year old with shortness of breath.",
    "___ year old with cough and fever.",
    "Chest pain, evaluate.",
    "Follow-up study.",
    "Preoperative evaluation.",
]

#: Held-out retrieval queries: five per category, none of them ever written in a report, each
#: made only of words that the reports use (a test checks both).
TEXT_QUERIES = {
    F.ATELECTASIS: [
        "Atelectasis is present.",
        "There is atelectasis at the lung base.",
        "Discoid atelectasis is seen.",
        "Linear atelectasis at the base of the lung.",
        "Findings of atelectasis with volume loss.",
    ],
    F.CARDIOMEGALY: [
        "The cardiac silhouette is enlarged.",
        "There is cardiomegaly.",
        "The heart is moderately enlarged.",
        "Enlargement of the heart is seen.",
        "Enlarged cardiac silhouette is present.",
    ],
    F.EDEMA: [
        "Pulmonary edema is present.",
        "Findings of pulmonary edema.",
        "There is interstitial pulmonary edema.",
        "Perihilar edema is seen.",
        "Edema in both lungs with Kerley lines.",
    ],
    F.FRACTURE: [
        "A fracture is seen.",
        "There is a rib fracture.",
        "Acute fracture is present.",
        "Fracture with step-off.",
        "A displaced fracture is present.",
    ],
    F.EFFUSION: [
        "Pleural effusion is seen.",
        "There is pleural fluid.",
        "Costophrenic angle blunting with pleural fluid.",
        "Moderate pleural effusion is present.",
        "Pleural effusion obscures the hemidiaphragm.",
    ],
    F.PNEUMONIA: [
        "Pneumonia is present.",
        "There is pneumonia.",
        "Lobe consolidation consistent with pneumonia.",
        "Findings concerning for pneumonia.",
        "Consolidation with air bronchograms is seen.",
    ],
    F.PNEUMOTHORAX: [
        "Pneumothorax is present.",
        "A pneumothorax is seen.",
        "Pleural line without lung markings.",
        "There is pneumothorax at the apex.",
        "Apical pneumothorax is seen.",
    ],
    F.NO_FINDING: [
        "The lungs are clear and the heart is normal.",
        "No acute intrathoracic process.",
        "The chest is normal.",
        "Heart and lungs are normal.",
        "No abnormality is seen.",
    ],
}

_ORDINAL = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth", 10: "tenth"}


def _fill(template: str, f: F.Finding | None) -> str:
    side = "right"
    if f is not None and f.sides:
        side = "bilateral" if len(f.sides) == 2 else ("right" if f.sides[0] == RIGHT else "left")
    params = f.params if f is not None else {}
    first = params.get("first_rib", 4) + 1  # rib index 0 is the first rib
    out = template.format(
        side=side,
        Side=side.capitalize(),
        lobe=params.get("lobe", "lower"),
        site=params.get("kind", "rib").rstrip("s"),
        rib_a=_ORDINAL.get(first, f"{first}th"),
        rib_b=_ORDINAL.get(first + params.get("ribs", 2) - 1, "lower"),
    )
    if "bilateral pleural effusion" in out.lower():
        out = out.replace("effusion", "effusions").replace("There is a bilateral", "There are bilateral").replace("A moderate bilateral", "Moderate bilateral")
        out = out.replace("effusions is ", "effusions are ").replace("effusions obscures the hemidiaphragm", "effusions obscure the hemidiaphragms")
    return out


def _pick(rng: np.random.Generator, bank: list[str]) -> str:
    return bank[int(rng.integers(len(bank)))]


def write_report(found: list[F.Finding], rng: np.random.Generator) -> str:
    """A report for these findings: positives first, then negations and normal statements."""
    names = {f.name for f in found}
    positives = []
    for f in found:
        bank = FRACTURE_SITE[f.params["kind"]] if f.name == F.FRACTURE else POSITIVE[f.name]
        # One or two different sentences per finding, as a radiologist describes what is there.
        k = 2 if rng.random() < 0.5 else 1
        for j in rng.choice(len(bank), size=k, replace=False):
            positives.append(_fill(bank[int(j)], f))
    others = []
    for name in F.FINDINGS:
        if name not in names and rng.random() < NEGATION_P:
            others.append(_pick(rng, NEGATION[name]))
    if not names & PARENCHYMAL and rng.random() < 0.8:
        others.append(_pick(rng, CLEAR_LUNGS))
    if rng.random() < 0.5:
        others.append(_pick(rng, ALWAYS_NORMAL))
    rng.shuffle(others)
    findings_text = " ".join(positives + others) or _pick(rng, CLEAR_LUNGS)
    if found:
        impression = " ".join(_fill(_pick(rng, IMPRESSION[f.name]), f) for f in found)
    else:
        impression = _pick(rng, NORMAL_IMPRESSION)
    head = ""
    if rng.random() < 0.5:
        head = f"INDICATION: {_pick(rng, INDICATION)}\n\nCOMPARISON: None.\n\n"
    return f"{head}FINDINGS: {findings_text}\n\nIMPRESSION: {impression}"
