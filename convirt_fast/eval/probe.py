"""Linear probe: a linear head on frozen, cached image features (PAPER.md "Linear probe").

Every image is embedded once; each (label fraction, seed) then only fits a logistic regression
on those features: full-batch L-BFGS, features standardised with the training subset's
statistics, an L2 penalty chosen on the validate split from a small grid (the paper does not
give one; a fixed value either underfits 100 % or overfits 1 %). Multi-label: one sigmoid per
label, blank labels masked out of the loss; multi-class: softmax cross-entropy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from convirt_fast.eval.metrics import classification_metrics, mean_std
from convirt_fast.eval.tasks import ClassificationTask, label_subset

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
MAX_ITER = 100
# L-BFGS memory: torch's default (100) makes each step 100s of tiny dot products, the probe's
# whole cost on a CPU; 10 converges as well on these convex problems.
HISTORY = 10
# Below this many feature values a CPU fit runs on one thread.
SMALL = 2_000_000


def classification_loss(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy (multi-class) or per-label sigmoid cross-entropy with blank (NaN)
    labels masked out (multi-label; zero, with a graph, when a batch has no known label)."""
    if kind == "multi-class":
        return F.cross_entropy(logits, y.argmax(1))
    known = ~torch.isnan(y)
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], y[known])


def fit_linear(x: torch.Tensor, y: torch.Tensor, kind: str, l2: float, max_iter: int = MAX_ITER) -> torch.nn.Linear:
    """Logistic regression (n, D) -> (n, L) by L-BFGS from zeros (deterministic)."""
    head = torch.nn.Linear(x.shape[1], y.shape[1], dtype=x.dtype, device=x.device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=HISTORY,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = classification_loss(kind, head(x), y) + 0.5 * l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    if x.device.type == "cpu" and x.numel() < SMALL:
        torch.set_num_threads(1)  # tiny vector ops: waking a thread pool costs more than the work
    try:
        optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    return head


def probe_once(features: dict[str, torch.Tensor], y: dict[str, np.ndarray], kind: str, labels: list[str],
               l2_grid: tuple[float, ...] = L2_GRID) -> dict:
    """Fit on features["train"], pick the L2 penalty on "val", report "test"."""
    # float64 where it is cheap (L-BFGS converges tighter), float32 for large real sets.
    dtype = torch.float64 if features["train"].numel() < SMALL else torch.float32
    x_train = features["train"].to(dtype)
    mean, std = x_train.mean(0), x_train.std(0, unbiased=False).clamp_min(1e-6)
    x = {k: (v.to(dtype) - mean) / std for k, v in features.items()}
    y_train = torch.from_numpy(y["train"]).to(x_train)
    best = None
    for l2 in l2_grid:
        head = fit_linear(x["train"], y_train, kind, l2)
        with torch.no_grad():
            val = classification_metrics(kind, head(x["val"]).cpu().numpy(), y["val"], labels)["value"]
        if best is None or (val > best[0]) or np.isnan(best[0]):
            best = (val, l2, head)
    _, l2, head = best
    with torch.no_grad():
        test = classification_metrics(kind, head(x["test"]).cpu().numpy(), y["test"], labels)
    return {**test, "l2": l2, "val_value": best[0]}


def linear_probe(features: dict[str, torch.Tensor], task: ClassificationTask, fractions: tuple[float, ...],
                 seeds: tuple[int, ...]) -> dict:
    """features: {"train", "val", "test"} (n, D) in the task's row order. Per fraction: the
    headline metric's mean and std over seeds, per-label means, and every run."""
    y_all = {"train": task.y(task.train_rows), "val": task.y(task.val_rows), "test": task.y(task.test_rows)}
    out = {}
    for fraction in fractions:
        runs = []
        for seed in seeds:
            pick = label_subset(y_all["train"], fraction, seed)
            idx = torch.from_numpy(pick)
            f = {"train": features["train"][idx], "val": features["val"], "test": features["test"]}
            result = probe_once(f, {**y_all, "train": y_all["train"][pick]}, task.kind, task.labels)
            runs.append({"seed": seed, "n_train": len(pick), **result})
        out[fraction_key(fraction)] = summarize_runs(runs, task.labels)
    return out


def fraction_key(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def summarize_runs(runs: list[dict], labels: list[str]) -> dict:
    return {"metric": runs[0]["metric"], **mean_std([r["value"] for r in runs]),
            "n_train": runs[0]["n_train"],
            "per_label": {name: mean_std([r["per_label"][name] for r in runs]) for name in labels},
            "runs": runs}
