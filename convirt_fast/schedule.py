"""The optimizer, and learning-rate schedules with state for exact resume: the paper's plateau
rule, or cosine."""

from __future__ import annotations

import math

import torch


def build_optimizer(params, optim) -> torch.optim.AdamW:
    """AdamW with the OptimConfig's lr, betas and weight decay, fused (CUDA and CPU): one kernel
    for every parameter, and it takes `found_inf`, a device flag that skips the update without
    the host ever reading it (Trainer.train_step)."""
    return torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay, fused=True)


class LRSchedule:
    """lr(step) = base_lr x warm-up x (cosine decay | plateau scale).

    plateau (paper): after `patience` validations without a new best validation loss the scale
    is multiplied by `factor` (0.5), and the count restarts.
    """

    def __init__(self, base_lr: float, kind: str, max_steps: int, warmup_steps: int = 0,
                 patience: int = 5, factor: float = 0.5):
        self.base_lr, self.kind, self.max_steps = base_lr, kind, max_steps
        self.warmup_steps, self.patience, self.factor = warmup_steps, patience, factor
        self.scale = 1.0
        self.best = math.inf
        self.bad_validations = 0
        self.cuts = 0

    @classmethod
    def from_config(cls, optim, max_steps: int) -> "LRSchedule":
        return cls(optim.lr, optim.schedule, max_steps, optim.warmup_steps, optim.plateau_patience, optim.plateau_factor)

    def lr(self, step: int) -> float:
        """The lr of optimizer step `step` (0-based)."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.kind == "cosine":
            progress = min(1.0, max(0, step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
            return self.base_lr * warm * 0.5 * (1 + math.cos(math.pi * progress))
        return self.base_lr * warm * self.scale

    def validation(self, loss: float) -> bool:
        """Record a validation loss; True when it is a new best."""
        if loss < self.best:
            self.best, self.bad_validations = loss, 0
            return True
        self.bad_validations += 1
        if self.kind == "plateau" and self.bad_validations >= self.patience:
            self.scale *= self.factor
            self.bad_validations = 0
            self.cuts += 1
        return False

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_validations": self.bad_validations, "cuts": self.cuts}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best = float(state["scale"]), float(state["best"])
        self.bad_validations, self.cuts = int(state["bad_validations"]), int(state["cuts"])
