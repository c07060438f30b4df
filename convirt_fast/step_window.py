"""What the training steps between two log points leave on the device, read on the host once.

The step itself never reads a device value (a read waits for the GPU to finish everything queued,
so the next step could not be queued behind it): each step appends its loss and its non-finite
flag as device tensors, and `read()` brings the whole window to the host in one transfer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class NonFiniteLoss(RuntimeError):
    """A NaN or inf loss with train.on_nonfinite=stop; names the step and the studies."""

    @classmethod
    def at(cls, first_nonfinite: tuple[int, float, list[int]], rank: int, studies) -> NonFiniteLoss:
        """From `WindowSummary.first_nonfinite`; `studies`: the manifest's, indexed by row."""
        step, loss, rows = first_nonfinite
        return cls(f"non-finite loss or gradient at step {step} (rank {rank} loss {loss}); "
                   f"studies of this rank's batch: {[studies[r].study_id for r in rows]}")


@dataclass
class WindowSummary:
    steps: int
    finite_steps: int
    mean_loss: float
    """Mean of the finite steps' losses (nan when none was finite)."""
    first_nonfinite: tuple[int, float, list[int]] | None
    """(step, this rank's loss, this rank's manifest rows) of the first non-finite step."""
    extra: list[float]
    """The values of `read(extra=...)`'s tensors, read in the same transfer."""


class StepWindow:
    def __init__(self):
        self._clear()

    def _clear(self) -> None:
        self._steps: list[int] = []
        self._losses: list[torch.Tensor] = []  # 0-d, this rank's mean over the micro-batches
        self._bad: list[torch.Tensor] = []  # 0-d, 1.0 where the step was skipped (non-finite)
        self._rows: list[list[torch.Tensor]] = []  # host tensors, converted only when a step was bad

    def __len__(self) -> int:
        return len(self._steps)

    def record(self, step: int, loss: torch.Tensor, bad: torch.Tensor, rows: list[torch.Tensor]) -> None:
        """rows: the micro-batches' manifest rows (host tensors), to name the studies of a bad step."""
        self._steps.append(step)
        self._losses.append(loss.detach().float())
        self._bad.append(bad.detach().float())
        self._rows.append(list(rows))

    def read(self, extra: list[torch.Tensor] = ()) -> WindowSummary:
        """One device-to-host transfer for the whole window (and `extra` 0-d tensors, e.g. a
        learnable temperature); the window is emptied."""
        n = len(self._steps)
        values = torch.stack([*self._losses, *self._bad, *(t.detach().float().reshape(()) for t in extra)]).tolist()
        losses, bad = values[:n], values[n:2 * n]
        finite = [loss for loss, b in zip(losses, bad) if not b]
        first = next(((s, loss, [r for part in rows for r in part.tolist()])
                      for s, loss, b, rows in zip(self._steps, losses, bad, self._rows) if b), None)
        self._clear()
        return WindowSummary(n, len(finite), sum(finite) / len(finite) if finite else math.nan, first, values[2 * n:])
