"""Fine-tuning (PAPER.md "Fine-tune"): the image encoder + dropout + a linear head, trained end to end.

Paper settings (the defaults of `FinetuneSettings`): the head alone first (encoder frozen, in
eval mode so its BatchNorm statistics stay put) for 200 steps at lr 1e-3, then everything at
lr 1e-4 (1e-3 for COVIDx); Adam with weight decay 1e-6; dropout 0.2 before the head; batch 64;
the lr halved after 3 epochs without a better validation metric, stopped after 10; the weights
of the best validation epoch are tested. Images get the evaluation transform (zero-pad to square,
resize). Every epoch reshuffles the label subset with the run's seed (the loader's permutation of
(seed, epoch)); one training loader and one validation loader serve every epoch.

This is the expensive protocol (a full forward and backward per image per epoch), so
`max_epochs` and `max_steps` cap it; the CLI lowers them on a CPU (see docs/evaluation.md).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from convirt_fast.eval.embed import Embedder, image_loader
from convirt_fast.eval.metrics import classification_metrics
from convirt_fast.eval.probe import classification_loss
from convirt_fast.eval.tasks import ClassificationTask


@dataclass
class FinetuneSettings:
    lr: float = 1e-4
    head_lr: float = 1e-3
    warmup_steps: int = 200
    max_epochs: int = 100
    """Upper bound; early stopping usually ends sooner."""
    max_steps: int | None = None
    """Total optimizer steps (warm-up included) after which training stops; None: no cap."""
    lr_patience: int = 3
    stop_patience: int = 10
    dropout: float = 0.2
    batch_size: int = 64
    weight_decay: float = 1e-6

    def __post_init__(self) -> None:
        if min(self.max_epochs, self.batch_size, self.lr_patience, self.stop_patience) < 1 or self.warmup_steps < 0:
            raise ValueError(f"fine-tune settings out of range: {self}")


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, features: int, classes: int, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(images)))


def finetune_once(encoder, manifest, task: ClassificationTask, train_rows: list[int], seed: int,
                  settings: FinetuneSettings, *, spec, device, workers: int = 0, scorer=None) -> dict:
    """One run: train on `train_rows`, select on task.val_rows, test on task.test_rows.

    scorer(rows, logits) -> metrics dict scores the model's outputs on those rows (selection and
    test); None: classification_metrics on the rows themselves. A data set scored per study from
    several images (MURA) passes one that aggregates the images of each study."""
    from convirt_fast.models.image_encoder import image_feature_dim  # torchvision: imported on use

    torch.manual_seed(seed)
    backbone = encoder.fresh_image_encoder().to(device)
    model = Classifier(backbone, image_feature_dim(backbone), len(task.labels), settings.dropout).to(device)
    targets = torch.from_numpy(np.stack([task.targets[r] for r in train_rows])).float()
    target_of = dict(zip(train_rows, targets))
    val_y, test_y = task.y(task.val_rows), task.y(task.test_rows)

    # One loader (and its workers) per row list for the whole run: the training rows reshuffled
    # each epoch (set_epoch), the validation rows embedded after each epoch.
    loader = image_loader(manifest, train_rows, spec=spec, device=device, batch_size=settings.batch_size,
                          workers=workers, shuffle=True, seed=seed)
    embed_val = Embedder(manifest, task.val_rows, spec=spec, device=device, batch_size=settings.batch_size,
                         workers=workers)

    def evaluate(embed: Embedder, rows: list[int], y: np.ndarray) -> dict:
        model.eval()
        logits = embed(model)
        if scorer is not None:
            return scorer(rows, logits.numpy())
        return classification_metrics(task.kind, logits.numpy(), y, task.labels)

    def optimizer_for(params, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, weight_decay=settings.weight_decay)

    warm = settings.warmup_steps > 0
    backbone.requires_grad_(not warm)
    optimizer = optimizer_for(model.head.parameters() if warm else model.parameters(),
                              settings.head_lr if warm else settings.lr)
    step, best_value, best_state, best_epoch, flat, epochs = 0, -math.inf, None, 0, 0, 0
    history = []
    for epoch in range(settings.max_epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            if len(batch["rows"]) < 2:  # BatchNorm cannot train on one image (1x1 maps at small sizes)
                continue
            if warm and step == settings.warmup_steps:  # warm-up over: train everything
                warm = False
                backbone.requires_grad_(True)
                optimizer = optimizer_for(model.parameters(), settings.lr)
            model.train()
            if warm:
                backbone.eval()
            y = torch.stack([target_of[r] for r in batch["rows"].tolist()]).to(device)
            loss = classification_loss(task.kind, model(batch["images"]), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if settings.max_steps is not None and step >= settings.max_steps:
                break
        epochs = epoch + 1
        value = evaluate(embed_val, task.val_rows, val_y)["value"]
        history.append(round(float(value), 4))
        if value > best_value or best_state is None:
            best_value, best_state, best_epoch, flat = value, copy.deepcopy(model.state_dict()), epochs, 0
        elif not warm:  # the plateau rules apply once the whole network trains
            flat += 1
            if flat % settings.lr_patience == 0:
                for group in optimizer.param_groups:
                    group["lr"] *= 0.5
            if flat >= settings.stop_patience:
                break
        if settings.max_steps is not None and step >= settings.max_steps:
            break
    loader.close()  # the workers stop now, not when the loaders are garbage-collected
    embed_val.close()
    model.load_state_dict(best_state)
    embed_test = Embedder(manifest, task.test_rows, spec=spec, device=device, batch_size=settings.batch_size,
                          workers=workers)
    test = evaluate(embed_test, task.test_rows, test_y)
    embed_test.close()
    return {**test, "steps": step, "epochs": epochs, "best_epoch": best_epoch, "val_value": float(best_value),
            "val_history": history}
