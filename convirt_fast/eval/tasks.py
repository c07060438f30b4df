"""The classification task of a prepared data set, and the seeded, stratified label subsets.

Labels come from the manifest's label columns. Policy for CheXpert-style values: 1 positive,
0 negative, -1 (uncertain) counted as negative (CheXpert's "U-zeros"), blank (not mentioned)
ignored for that label (left out of that label's loss and AUC, kept for the others).

Kind: multi-class when every train study with a label has exactly one positive (accuracy over
argmax), else multi-label (AUC per label, mean AUC). Multi-class studies without exactly one
positive are left out (counted).

Splits: train (label fractions are drawn from it), validate (early stopping, the probe's
regularisation), test (reported). A data set without a test split reports on its retrieval
split when that has labels (SynthCXR: exclusively positive images never trained on); without a
validate split, a seeded 10 % of train is held out.

Image-level sets of multi-image studies (MURA: manifest.json `"evaluation": {"unit": "image",
"aggregate": "study_mean"}`) are expanded first (`expand_images`): one row per image, labelled
with its study; the study of each row is kept so that a metric can average a study's image
probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

VALIDATE_HOLDOUT = 0.1


@dataclass
class ClassificationTask:
    labels: list[str]
    kind: str
    """multi-label | multi-class"""
    train_rows: list[int]
    val_rows: list[int]
    test_rows: list[int]
    test_split: str
    targets: dict[int, np.ndarray] = field(repr=False)
    """manifest row -> (L,) float: 1, 0, NaN (ignore) for multi-label; one-hot for multi-class."""
    notes: list[str] = field(default_factory=list)

    def y(self, rows: list[int]) -> np.ndarray:
        return np.stack([self.targets[r] for r in rows]) if rows else np.zeros((0, len(self.labels)))

    def classes(self, rows: list[int]) -> np.ndarray:
        """Multi-class targets as class indices."""
        return self.y(rows).argmax(1)


def image_level(manifest) -> bool:
    """Whether the manifest asks to be evaluated per image, aggregated per study (module doc)."""
    return (manifest.meta.get("evaluation") or {}).get("unit") == "image"


def expand_images(manifest):
    """(manifest with one row per image, the study id of each row). Row ids are
    "<study_id>#<k>"; labels, patient and split are the study's."""
    import dataclasses

    from convirt_fast.data.manifest import Manifest

    studies, groups = [], []
    for s in manifest.studies:
        for k, image in enumerate(s.images):
            studies.append(dataclasses.replace(s, study_id=f"{s.study_id}#{k}", images=(image,)))
            groups.append(s.study_id)
    return Manifest(root=manifest.root, studies=studies, label_columns=manifest.label_columns, meta=manifest.meta), groups


def build_task(manifest) -> ClassificationTask:
    """The task of a manifest (see the module doc); ValueError naming the folder when unusable."""
    if not manifest.label_columns:
        raise ValueError(f"{manifest.root}: the manifest has no label columns, so there is nothing to classify")
    raw = manifest.label_matrix().astype(np.float64)
    values = np.where(raw == -1, 0.0, raw)  # U-zeros; NaN (blank) stays NaN
    notes = ["uncertain (-1) labels counted as negative (U-zeros); blank labels ignored per label"]
    splits = {s.split for s in manifest.studies}
    train = manifest.split_indices("train")
    if not train:
        raise ValueError(f"{manifest.root}: no train split to fit classifiers on")
    if "test" in splits:
        test_split = "test"
    elif "retrieval" in splits:
        test_split = "retrieval"
        notes.append("no test split: results are on the retrieval split (never trained on)")
    else:
        raise ValueError(f"{manifest.root}: no test split (nor a labelled retrieval split) to report on")
    test = manifest.split_indices(test_split)
    val = manifest.split_indices("validate")
    if not val:
        rng = np.random.default_rng(0)
        held = set(rng.choice(train, size=max(1, round(len(train) * VALIDATE_HOLDOUT)), replace=False).tolist())
        val, train = sorted(held), [r for r in train if r not in held]
        notes.append(f"no validate split: {len(val)} train studies held out (seed 0)")
    labelled = [r for r in train if (values[r] == 1).any() or (values[r] == 0).any()]
    single = all((values[r] == 1).sum() == 1 for r in labelled)
    kind = "multi-class" if single and labelled else "multi-label"
    labels = list(manifest.label_columns)
    if kind == "multi-class":
        def usable(r: int) -> bool:
            return bool((values[r] == 1).sum() == 1)

        dropped = {name: sum(not usable(r) for r in rows) for name, rows in (("validate", val), ("test", test))}
        val, test = [r for r in val if usable(r)], [r for r in test if usable(r)]
        train = [r for r in train if usable(r)]
        if any(dropped.values()):
            notes.append(f"multi-class: studies without exactly one positive left out: {dropped}")
        targets = {r: (values[r] == 1).astype(np.float64) for r in (*train, *val, *test)}
    else:
        targets = {r: values[r] for r in (*train, *val, *test)}
    return ClassificationTask(labels, kind, train, val, test, test_split, targets, notes)


def label_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices into the rows of `y` (n, L): about `fraction` of them, drawn with `seed`, such that
    every label with positives (and negatives) in `y` keeps at least one of each.

    Stratified: first, label by label in a seeded order, one positive and one negative are
    taken when the subset lacks them; the rest is drawn uniformly. fraction 1 gives all rows."""
    n = len(y)
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must lie in (0, 1], got {fraction}")
    if fraction == 1:
        return np.arange(n)
    rng = np.random.default_rng([seed, round(fraction * 1e6)])
    target = max(1, math.ceil(fraction * n))
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    for j in rng.permutation(y.shape[1]):
        for value in (1.0, 0.0):
            if (y[taken, j] == value).any():
                continue
            pool = np.flatnonzero((y[:, j] == value) & ~taken)
            if len(pool):
                pick = int(rng.choice(pool))
                chosen.append(pick)
                taken[pick] = True
    rest = np.flatnonzero(~taken)
    extra = max(0, target - len(chosen))
    chosen.extend(rng.choice(rest, size=min(extra, len(rest)), replace=False).tolist())
    return np.sort(np.asarray(chosen, dtype=np.int64))
