"""Evaluation metrics and the cheap parts of the suite: AUC and Precision@k against hand-computed
cases, label-fraction sampling, the linear probe on features with a known structure."""

import math

import numpy as np
import pytest
import torch

from convirt_fast.eval.metrics import accuracy, auc, classification_metrics, mean_std, midranks
from convirt_fast.eval.probe import linear_probe, probe_once
from convirt_fast.eval.retrieval import precision_at_k
from convirt_fast.eval.tasks import ClassificationTask, label_subset


def test_auc_hand_cases():
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)  # sklearn's doc example
    assert auc([1, 2, 3], [0, 1, 1]) == 1.0
    assert auc([3, 2, 1], [0, 1, 1]) == 0.0
    # Ties between classes count one half: pairs (pos, neg): (2,1) win, (2,2) tie, (3,1) win, (3,2) win.
    assert auc([1, 2, 2, 3], [0, 0, 1, 1]) == pytest.approx(3.5 / 4)
    assert auc([5, 5, 5, 5], [0, 1, 0, 1]) == 0.5
    assert math.isnan(auc([1, 2], [1, 1]))  # one class only: undefined
    assert auc([0.2, 0.9, 0.5, 0.1], [0, 1, float("nan"), 0]) == 1.0  # NaN labels ignored


def test_midranks_average_ties():
    assert midranks(np.array([10, 20, 20, 30, 20])).tolist() == [1, 3, 3, 5, 3]


def test_auc_matches_scipy_mann_whitney():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = rng.integers(0, 6, n).astype(float)  # many ties
        u = stats.mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
        assert auc(scores, labels) == pytest.approx(u / ((labels == 1).sum() * (labels == 0).sum()))


def test_auc_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels must be 0, 1"):
        auc([1, 2], [0, 2])


def test_classification_metrics_kinds():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    y = np.array([[1, 0], [0, 1], [0, 1]], dtype=float)
    mc = classification_metrics("multi-class", scores, y, ["a", "b"])
    assert mc["metric"] == "accuracy" and mc["value"] == pytest.approx(2 / 3)
    ml = classification_metrics("multi-label", scores, y, ["a", "b"])
    assert ml["metric"] == "mean_auc" and ml["value"] == pytest.approx(1.0)
    assert accuracy(np.array([1, 2]), np.array([1, 3])) == 0.5
    assert mean_std([0.5, 0.7])["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))


def test_precision_at_k_hand_case():
    # One query of label a; candidates ranked by similarity: a, b, a, b.
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    p = precision_at_k(sim, ["a"], ["a", "b", "a", "b"], ks=(1, 2, 3, 10))
    assert [p[k].item() for k in (1, 2, 3)] == pytest.approx([1.0, 0.5, 2 / 3])
    assert p[10].item() == pytest.approx(0.5)  # k beyond the candidates: all of them


def test_precision_at_k_leave_one_out_skips_self():
    emb = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    labels = ["a", "b", "b", "a"]
    p = precision_at_k(emb @ emb.T, labels, labels, ks=(1, 3), leave_one_out=True)
    # Without the exclusion every query's top 1 would be itself (P@1 = 1); its nearest other is the wrong one.
    assert p[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert p[3].tolist() == pytest.approx([1 / 3] * 4)  # k counts among the 3 others only


def test_label_subset_stratified_and_seeded():
    rng = np.random.default_rng(1)
    y = (rng.random((1000, 6)) < np.array([0.002, 0.01, 0.05, 0.3, 0.5, 0.995])).astype(float)
    y[rng.random((1000, 6)) < 0.05] = np.nan  # blanks
    y[0], y[1] = 1.0, 0.0  # every label has both classes somewhere (the rarest only once or twice)
    for fraction in (0.01, 0.1):
        pick = label_subset(y, fraction, seed=3)
        assert len(pick) == len(set(pick.tolist())) >= math.ceil(fraction * 1000)
        assert len(pick) <= math.ceil(fraction * 1000) + 2 * y.shape[1]
        for j in range(6):  # every label keeps a positive and a negative
            assert (y[pick, j] == 1).any() and (y[pick, j] == 0).any()
        assert np.array_equal(pick, label_subset(y, fraction, seed=3))
        assert not np.array_equal(pick, label_subset(y, fraction, seed=4))
    assert np.array_equal(label_subset(y, 1.0, seed=0), np.arange(1000))
    with pytest.raises(ValueError):
        label_subset(y, 0.0, seed=0)


def _separable(n, d, labels, seed, noise=0.3):
    """Features whose first `labels` dimensions carry the labels (+-1 shifts) plus noise dims."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, labels, generator=g) < 0.4).double()
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * noise
    x[:, :labels] += 2 * y - 1
    return x.float(), y.numpy()


def test_linear_probe_separates_known_structure():
    names = ["a", "b", "c"]
    (xtr, ytr), (xva, yva), (xte, yte) = (_separable(n, 20, 3, s) for n, s in ((300, 0), (100, 1), (200, 2)))
    result = probe_once({"train": xtr, "val": xva, "test": xte}, {"train": ytr, "val": yva, "test": yte},
                        "multi-label", names)
    assert result["value"] > 0.99 and all(v > 0.99 for v in result["per_label"].values())
    # Shuffled labels carry no signal: the same probe must sit near chance.
    perm = np.random.default_rng(0).permutation(200)
    chance = probe_once({"train": xtr, "val": xva, "test": xte}, {"train": ytr, "val": yva, "test": yte[perm]},
                        "multi-label", names)
    assert abs(chance["value"] - 0.5) < 0.1


def test_linear_probe_over_fractions_and_seeds_multiclass():
    g = torch.Generator().manual_seed(0)
    n, classes = 600, 3
    cls = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, 8, generator=g) * 3
    x = centers[cls] + torch.randn(n, 8, generator=g)
    y = torch.nn.functional.one_hot(cls, classes).double().numpy()
    rows = list(range(n))
    task = ClassificationTask(["x", "y", "z"], "multi-class", rows[:400], rows[400:500], rows[500:], "test",
                              {r: y[r] for r in rows})
    out = linear_probe({"train": x[:400], "val": x[400:500], "test": x[500:]}, task, (0.01, 1.0), (0, 1, 2))
    assert set(out) == {"1%", "100%"}
    assert out["1%"]["n_train"] >= 4 and len(out["1%"]["runs"]) == 3
    assert out["100%"]["mean"] > 0.9 and out["100%"]["std"] == pytest.approx(0.0)  # all labels: seeds agree
    assert out["1%"]["metric"] == "accuracy" and out["1%"]["mean"] > 1 / classes
