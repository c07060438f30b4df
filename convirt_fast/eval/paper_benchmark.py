"""`evaluate --benchmark paper`: the paper's Tables 1 and 2 (PAPER.md) for the given encoders.

Table 1: linear probe and fine-tuning on RSNA Pneumonia (AUC), CheXpert (mean AUC of the 5
competition labels), COVIDx (accuracy) and MURA (study-level AUC: the mean of a study's image
probabilities), at 1 / 10 / 100 % of the training labels (COVIDx: 10 / 100 %), 5 seeds each;
fine-tuning lr 1e-3 for COVIDx, 1e-4 for the others. Table 2: image->image and text->image
Precision@5/10/50 on CheXpert 8x200. Each set is a folder from `prepare rsna | chexpert |
covidx | mura | chexpert-8x200`; any subset may be given, a missing or unusable folder is
skipped with a line saying why. The paper's own rows (random, ImageNet, ConVIRT) are printed
beside ours.

MURA is trained per image and scored per study in both protocols: the linear probe here
(`study_level_probe`), fine-tuning through `eval/finetune.py` with a study-level scorer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convirt_fast.eval.finetune import FinetuneSettings
from convirt_fast.eval.probe import L2_GRID, fit_linear, fraction_key, summarize_runs
from convirt_fast.eval.suite import SuiteSettings, evaluate_encoder, task_summary
from convirt_fast.eval.tasks import build_task, expand_images, image_level, label_subset


@dataclass(frozen=True)
class Protocol:
    title: str
    fractions: tuple[float, ...]
    finetune_lr: float
    metric: str


CLASSIFICATION = {
    "rsna": Protocol("RSNA", (0.01, 0.1, 1.0), 1e-4, "AUC"),
    "chexpert": Protocol("CheXpert", (0.01, 0.1, 1.0), 1e-4, "mean AUC"),
    "covidx": Protocol("COVIDx", (0.1, 1.0), 1e-3, "accuracy"),
    "mura": Protocol("MURA", (0.01, 0.1, 1.0), 1e-4, "study-level AUC"),
}
RETRIEVAL = "chexpert-8x200"
KEYS = (*CLASSIFICATION, RETRIEVAL)
_ALIASES = {"chexpert8x200": RETRIEVAL, "chexpert_8x200": RETRIEVAL, "8x200": RETRIEVAL}

# PAPER.md, Tables 1 (linear probe, fine-tuning; x 100) and 2 (Precision@5/10/50 x 100).
PAPER_TABLE1 = {
    "linear": {
        "random": {"rsna": (55.0, 67.3, 72.3), "chexpert": (58.2, 63.7, 66.2), "covidx": (69.2, 73.5),
                   "mura": (50.9, 56.8, 62.0)},
        "ImageNet": {"rsna": (82.8, 85.4, 86.9), "chexpert": (75.7, 79.7, 81.0), "covidx": (83.7, 88.6),
                     "mura": (63.8, 74.1, 79.0)},
        "ConVIRT": {"rsna": (90.7, 91.7, 92.1), "chexpert": (85.9, 86.8, 87.3), "covidx": (85.9, 91.7),
                    "mura": (81.2, 85.1, 87.6)},
    },
    "finetune": {
        "random": {"rsna": (71.9, 82.2, 88.5), "chexpert": (70.4, 81.1, 85.8), "covidx": (75.4, 87.7),
                   "mura": (56.8, 61.6, 79.1)},
        "ImageNet": {"rsna": (83.1, 87.3, 90.8), "chexpert": (80.1, 84.8, 87.6), "covidx": (84.4, 90.3),
                     "mura": (72.1, 81.8, 87.0)},
        "ConVIRT": {"rsna": (88.8, 91.5, 92.7), "chexpert": (87.0, 88.1, 88.1), "covidx": (90.3, 92.4),
                    "mura": (81.3, 86.5, 89.0)},
    },
}
PAPER_TABLE2 = {
    "ImageNet": {"image_to_image": (14.8, 14.4, 15.0), "text_to_image": None},
    "ConVIRT": {"image_to_image": (45.0, 42.9, 35.7), "text_to_image": (60.0, 57.5, 48.8)},
}


def parse_data(text: str | None) -> dict[str, Path]:
    """"rsna=DIR,chexpert=DIR,..." -> {key: Path}; ValueError naming an unknown key."""
    if not text:
        raise ValueError(f"--benchmark paper needs --data KEY=DIR[,KEY=DIR...] with keys among {', '.join(KEYS)}")
    out: dict[str, Path] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, folder = part.partition("=")
        key = _ALIASES.get(key.strip().lower(), key.strip().lower())
        if not sep or key not in KEYS or not folder.strip():
            raise ValueError(f"--data {part!r}: expected KEY=DIR with KEY among {', '.join(KEYS)}")
        out[key] = Path(folder.strip())
    return out


def _load(key: str, folder: Path):
    """The prepared manifest of `folder`, or (None, why) when it cannot be used."""
    from convirt_fast.data.manifest import ManifestError, load_manifest

    if not folder.exists():
        return None, f"{folder} does not exist"
    try:
        manifest = load_manifest(folder)
    except ManifestError as error:
        return None, str(error)
    made_for = (manifest.meta.get("benchmark") or {}).get("task")
    if made_for is not None and made_for != key:
        return None, f"{folder} was prepared by `prepare {made_for}`, not `prepare {key}`"
    return manifest, None


def run_paper(encoders: list, data: dict[str, Path], *, spec, device, seeds: tuple[int, ...],
              finetune: FinetuneSettings, finetune_seeds: tuple[int, ...], batch_size: int, workers: int) -> dict:
    """Every task of `data` for every encoder; returns the JSON-able results (module doc)."""
    results: dict = {"benchmark": "paper", "tasks": {}, "skipped": {}, "encoders": [e.name for e in encoders]}
    for key in KEYS:
        if key not in data:
            results["skipped"][key] = "no folder given"
            continue
        manifest, why = _load(key, data[key])
        if manifest is None:
            print(f"[evaluate] {key}: skipped ({why})")
            results["skipped"][key] = why
            continue
        try:
            if key == RETRIEVAL:
                results["tasks"][key] = _retrieval(encoders, manifest, spec, device, batch_size, workers)
            else:
                protocol = CLASSIFICATION[key]
                settings = SuiteSettings(tasks=("linear", "finetune"), fractions=protocol.fractions, seeds=seeds,
                                         finetune=dataclasses.replace(finetune, lr=protocol.finetune_lr),
                                         finetune_seeds=finetune_seeds, batch_size=batch_size, workers=workers)
                results["tasks"][key] = _classification(key, encoders, manifest, settings, spec, device)
        except ValueError as error:  # an unusable set (no test split, no labels): skipped, said so
            print(f"[evaluate] {key}: skipped ({error})")
            results["skipped"][key] = str(error)
    return results


def _classification(key: str, encoders: list, manifest, settings: SuiteSettings, spec, device) -> dict:
    groups = None
    if image_level(manifest):
        manifest, groups = expand_images(manifest)
    task = build_task(manifest)
    out = {"data": str(manifest.root), "task": task_summary(task), "fractions": [fraction_key(f) for f in settings.fractions],
           "finetune_lr": settings.finetune.lr, "metric": CLASSIFICATION[key].metric, "encoders": {}}
    if groups is not None:
        out["aggregate"] = {"linear": "study", "finetune": "study"}
    for encoder in encoders:
        _log(f"{encoder.name}: {key}")
        if groups is None:
            r = evaluate_encoder(encoder, manifest=manifest, task=task, retrieval=None, spec=spec, device=device,
                                 settings=settings)
        else:  # study-level probe here; fine-tuning through the suite, scored per study
            r = evaluate_encoder(encoder, manifest=manifest, task=task, retrieval=None, spec=spec, device=device,
                                 settings=dataclasses.replace(settings, tasks=("finetune",)),
                                 finetune_scorer=study_scorer(task, groups))
            r["linear"] = study_level_probe(encoder, manifest, task, groups, settings, spec, device)
        out["encoders"][encoder.name] = r
    return out


def _retrieval(encoders: list, manifest, spec, device, batch_size: int, workers: int) -> dict:
    from convirt_fast.eval.retrieval import read_retrieval_set

    rs = read_retrieval_set(manifest)
    if rs is None:
        raise ValueError(f"{manifest.root}: no retrieval_images.csv (prepare it with `prepare chexpert-8x200`)")
    settings = SuiteSettings(tasks=("retrieval",), batch_size=batch_size, workers=workers)
    out = {"data": str(manifest.root), "candidates": len(rs.candidate_rows), "queries": len(rs.query_rows),
           "text_queries": len(rs.texts), "encoders": {}}
    for encoder in encoders:
        r = evaluate_encoder(encoder, manifest=manifest, task=None, retrieval=(manifest, rs), spec=spec, device=device,
                             settings=settings)
        r["retrieval"].pop("text_top", None)  # the retrieval grid belongs to the single-set report
        out["encoders"][encoder.name] = r
    return out


def study_level_probe(encoder, manifest, task, groups: list[str], settings: SuiteSettings, spec, device) -> dict:
    """The linear probe of probe.py on image rows, scored per study: a study's probability is the
    mean of its images' sigmoid outputs; the L2 penalty is chosen on the validation studies."""
    from convirt_fast.eval.embed import embed_images

    rows = task.train_rows + task.val_rows + task.test_rows
    _log(f"{encoder.name}: embedding {len(rows)} images once (study-level probe)")
    feats = embed_images(encoder.image_features, manifest, rows, spec=spec, device=device, batch_size=settings.batch_size,
                         workers=settings.workers)
    a, b = len(task.train_rows), len(task.train_rows) + len(task.val_rows)
    x_all = {"train": feats[:a], "val": feats[a:b], "test": feats[b:]}
    y_train = task.y(task.train_rows)
    study = {"val": _grouping([groups[r] for r in task.val_rows], task.y(task.val_rows)),
             "test": _grouping([groups[r] for r in task.test_rows], task.y(task.test_rows))}

    def score(head, x, split) -> dict:
        index, y = study[split]
        with torch.no_grad():
            logits = head(x).cpu().numpy()
        return study_metrics(task, logits, index, y)

    out = {}
    for fraction in settings.fractions:
        runs = []
        for seed in settings.seeds:
            pick = label_subset(y_train, fraction, seed)
            x_train = x_all["train"][torch.from_numpy(pick)].double()
            mean, std = x_train.mean(0), x_train.std(0, unbiased=False).clamp_min(1e-6)
            x = {k: (v.double() - mean) / std for k, v in x_all.items()}
            x["train"] = (x_train - mean) / std
            target = torch.from_numpy(y_train[pick]).double()
            best = None
            for l2 in L2_GRID:
                head = fit_linear(x["train"], target, task.kind, l2)
                val = score(head, x["val"], "val")["value"]
                if best is None or val > best[0] or math.isnan(best[0]):
                    best = (val, l2, head)
            test = score(best[2], x["test"], "test")
            runs.append({"seed": seed, "n_train": len(pick), **test, "l2": best[1], "val_value": best[0]})
        out[fraction_key(fraction)] = summarize_runs(runs, task.labels)
    return out


def study_metrics(task, logits: np.ndarray, index: np.ndarray, y: np.ndarray) -> dict:
    """Metrics per study: a study's probability is the mean of its images' sigmoid outputs
    (the paper's MURA rule). index: the study of each image row; y: (studies, L) labels."""
    from convirt_fast.eval.metrics import classification_metrics

    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    sums = np.zeros((len(y), p.shape[1]))
    np.add.at(sums, index, p)
    counts = np.bincount(index, minlength=len(y))[:, None]
    return classification_metrics(task.kind, sums / counts, y, task.labels)


def study_scorer(task, groups: list[str]):
    """finetune_once's scorer for image rows: their outputs aggregated per study."""
    def score(rows: list[int], logits: np.ndarray) -> dict:
        index, y = _grouping([groups[r] for r in rows], task.y(rows))
        return study_metrics(task, logits, index, y)
    return score


def _grouping(study_ids: list[str], y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(study index of each image row, (studies, L) labels: the study's, from its first image)."""
    order: dict[str, int] = {}
    index = np.array([order.setdefault(s, len(order)) for s in study_ids], dtype=np.int64)
    first = np.unique(index, return_index=True)[1]  # studies are numbered in order of appearance
    return index, y[first]


def _log(message: str) -> None:
    print(f"[evaluate] {message}", flush=True)
