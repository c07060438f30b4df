"""Runs the chosen protocols for one encoder and returns every number as plain JSON-able data."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from convirt_fast.eval.embed import embed_images
from convirt_fast.eval.finetune import FinetuneSettings, finetune_once
from convirt_fast.eval.metrics import classification_metrics
from convirt_fast.eval.probe import fraction_key, linear_probe, summarize_runs
from convirt_fast.eval.retrieval import evaluate_retrieval
from convirt_fast.eval.tasks import ClassificationTask, label_subset
from convirt_fast.eval.zeroshot import zeroshot_scores

if TYPE_CHECKING:  # torchvision: imported on use
    from convirt_fast.models.convirt import ConVIRTModel

TASKS = ("retrieval", "linear", "finetune", "zeroshot")


@dataclass
class SuiteSettings:
    tasks: tuple[str, ...] = TASKS
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    finetune_seeds: tuple[int, ...] | None = None
    """Seeds for fine-tuning (None: the same as the probe's)."""
    prompts: dict | None = None
    batch_size: int = 64
    workers: int = 0
    grid_top: int = 5


_START = time.perf_counter()


def _log(message: str) -> None:
    print(f"[evaluate {time.perf_counter() - _START:7.1f} s] {message}", flush=True)


def evaluate_encoder(encoder: ConVIRTModel, *, manifest, task: ClassificationTask | None, retrieval: tuple | None,
                     spec, device, settings: SuiteSettings, finetune_scorer=None) -> dict:
    """retrieval: (manifest, RetrievalSet or None) to rank on, or None to skip. finetune_scorer:
    see finetune.finetune_once (None: each row scored by itself)."""
    out: dict = {"has_text": encoder.has_text}
    encoder.to(device).eval()
    started = time.perf_counter()
    if "retrieval" in settings.tasks and retrieval is not None:
        r_manifest, r_set = retrieval
        _log(f"{encoder.name}: retrieval")
        out["retrieval"] = evaluate_retrieval(encoder, r_manifest, encoder.tokenizer if encoder.has_text else None,
                                              device=device, spec=spec, max_length=encoder.max_length,
                                              retrieval_set=r_set, top=settings.grid_top,
                                              batch_size=settings.batch_size, workers=settings.workers)
    needs_features = task is not None and ({"linear", "zeroshot"} & set(settings.tasks))
    if needs_features:
        rows = task.train_rows + task.val_rows + task.test_rows
        _log(f"{encoder.name}: embedding {len(rows)} images once")
        from convirt_fast.models.image_encoder import image_feature_dim  # torchvision: imported on use

        width = image_feature_dim(encoder.image_encoder)

        def both(images: torch.Tensor) -> torch.Tensor:  # pooled features, then projections
            f = encoder.image_features(images)
            return torch.cat([f, encoder.image_projection(f) if encoder.has_text else f[:, :0]], 1)

        emb = embed_images(both, manifest, rows, spec=spec, device=device, batch_size=settings.batch_size,
                           workers=settings.workers)
        feats, proj = emb[:, :width], emb[:, width:]
        a, b = len(task.train_rows), len(task.train_rows) + len(task.val_rows)
        if "linear" in settings.tasks:
            _log(f"{encoder.name}: linear probe, fractions {settings.fractions} x seeds {settings.seeds}")
            out["linear"] = linear_probe({"train": feats[:a], "val": feats[a:b], "test": feats[b:]}, task,
                                         settings.fractions, settings.seeds)
        if "zeroshot" in settings.tasks and encoder.has_text:
            _log(f"{encoder.name}: zero-shot")
            scores = zeroshot_scores(proj[b:], encoder, settings.prompts, task.labels, device)
            out["zeroshot"] = {**classification_metrics(task.kind, scores, task.y(task.test_rows), task.labels),
                               "prompts": settings.prompts}
    if "finetune" in settings.tasks and task is not None:
        out["finetune"] = {}
        y_train = task.y(task.train_rows)
        for fraction in settings.fractions:
            runs = []
            for seed in settings.finetune_seeds or settings.seeds:
                pick = label_subset(y_train, fraction, seed)
                rows = [task.train_rows[i] for i in pick]
                _log(f"{encoder.name}: fine-tune {fraction_key(fraction)} seed {seed} ({len(rows)} studies)")
                result = finetune_once(encoder, manifest, task, rows, seed, settings.finetune, spec=spec,
                                       device=device, workers=settings.workers, scorer=finetune_scorer)
                runs.append({"seed": seed, "n_train": len(rows), **result})
            out["finetune"][fraction_key(fraction)] = summarize_runs(runs, task.labels)
    out["seconds"] = round(time.perf_counter() - started, 1)
    encoder.to("cpu")
    return out


def task_summary(task: ClassificationTask) -> dict:
    y = task.y(task.train_rows)
    return {"kind": task.kind, "labels": task.labels, "test_split": task.test_split,
            "train": len(task.train_rows), "validate": len(task.val_rows), "test": len(task.test_rows),
            "train_positives": {name: int(np.nansum(y[:, j] == 1)) for j, name in enumerate(task.labels)},
            "notes": task.notes}
