"""Zero-shot classification by prompts: no labels used, only the text side.

Per label, a set of positive prompts ("there is X") and negative prompts ("there is no X"). Each
set's prompt embeddings are L2-normalised, averaged and normalised again (prompt ensembling, as
CLIP); an image's score for the label is cos(image, positive) - cos(image, negative). AUC per label
on the test split (multi-class: accuracy of the argmax of the scores). The prompts used are in
the report.

Defaults cover the CheXpert / SynthCXR categories; any other label gets "There is <label>." /
"There is no <label>." style prompts. Override with a JSON file:
    {"Cardiomegaly": {"positive": ["..."], "negative": ["..."]}, ...}
(labels not in the file keep their defaults).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_PROMPTS: dict[str, dict[str, list[str]]] = {
    "Atelectasis": {"positive": ["There is atelectasis.", "Plate-like atelectasis at the lung base.",
                                 "Bibasilar atelectasis."],
                    "negative": ["There is no atelectasis.", "No atelectasis."]},
    "Cardiomegaly": {"positive": ["The heart is enlarged.", "Cardiomegaly.", "The cardiac silhouette is enlarged."],
                     "negative": ["The heart size is normal.", "No cardiomegaly.", "The cardiac silhouette is normal."]},
    "Edema": {"positive": ["There is pulmonary edema.", "Interstitial edema.", "Pulmonary vascular congestion with edema."],
              "negative": ["There is no pulmonary edema.", "No edema."]},
    "Fracture": {"positive": ["There is a fracture.", "Displaced fracture of the clavicle.", "Rib fractures."],
                 "negative": ["No fracture is seen.", "No acute fracture."]},
    "Pleural Effusion": {"positive": ["There is a pleural effusion.", "Pleural effusion.",
                                      "Blunting of the costophrenic angle from effusion."],
                         "negative": ["There is no pleural effusion.", "No pleural effusion."]},
    "Pneumonia": {"positive": ["There is pneumonia.", "Lobar consolidation concerning for pneumonia.",
                               "Focal consolidation."],
                  "negative": ["There is no pneumonia.", "No focal consolidation."]},
    "Pneumothorax": {"positive": ["There is a pneumothorax.", "Pneumothorax.", "Apical pneumothorax."],
                     "negative": ["There is no pneumothorax.", "No pneumothorax."]},
    "No Finding": {"positive": ["No acute cardiopulmonary process.", "The lungs are clear.", "Normal chest radiograph."],
                   "negative": ["There is an acute abnormality.", "Abnormal chest radiograph."]},
}


def default_prompts(label: str) -> dict[str, list[str]]:
    if label in DEFAULT_PROMPTS:
        return DEFAULT_PROMPTS[label]
    name = label.lower()
    return {"positive": [f"There is {name}.", f"{label}.", f"Findings consistent with {name}."],
            "negative": [f"There is no {name}.", f"No {name}."]}


def load_prompts(labels: list[str], path: str | Path | None = None) -> dict[str, dict[str, list[str]]]:
    """Prompts for every label: defaults, overridden by the JSON file at `path`."""
    prompts = {label: default_prompts(label) for label in labels}
    if path is None:
        return prompts
    path = Path(path)
    try:
        given = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the prompts file: {error}") from None
    for label, sets in given.items():
        if label not in prompts:
            raise ValueError(f"{path}: label {label!r} is not one of the task's labels {labels}")
        if not isinstance(sets, dict) or not all(isinstance(sets.get(k), list) and sets[k]
                                                 and all(isinstance(t, str) for t in sets[k])
                                                 for k in ("positive", "negative")):
            raise ValueError(f"{path}: {label!r} needs non-empty lists of strings under 'positive' and 'negative'")
        prompts[label] = {"positive": list(sets["positive"]), "negative": list(sets["negative"])}
    return prompts


@torch.no_grad()
def prompt_embedding(encoder, texts: list[str], device) -> torch.Tensor:
    from convirt_fast.eval.retrieval import embed_texts

    emb = F.normalize(embed_texts(encoder, encoder.tokenizer, texts, device=device, max_length=encoder.max_length), dim=1)
    return F.normalize(emb.mean(0), dim=0)


def zeroshot_scores(image_embeddings: torch.Tensor, encoder, prompts: dict[str, dict[str, list[str]]],
                    labels: list[str], device) -> np.ndarray:
    """(n, d) image projections -> (n, L) scores: cos to the positive minus cos to the negative set."""
    images = F.normalize(image_embeddings.float(), dim=1)
    columns = []
    for label in labels:
        positive = prompt_embedding(encoder, prompts[label]["positive"], device)
        negative = prompt_embedding(encoder, prompts[label]["negative"], device)
        columns.append(images @ positive - images @ negative)
    return torch.stack(columns, 1).numpy()
