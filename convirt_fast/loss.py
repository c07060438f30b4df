"""`ConVIRTLoss`: the module users construct; it holds the hyper-parameters and calls the kernel.

    loss_fn = ConVIRTLoss(tau=0.1, lam=0.75)              # the paper's loss (PAPER.md, "Loss")
    loss = loss_fn(v, u)                                  # v, u: (N, D) image / text projections

Shapes are documented once, in `convirt_fast.kernels.convirt_loss`; the distributed semantics of
gather=True in `convirt_fast.kernels.distributed` (and docs/loss.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from convirt_fast.kernels.convirt_loss import BACKENDS, convirt_loss
from convirt_fast.kernels.distributed import convirt_loss_gathered
from convirt_fast.require import require


class ConVIRTLoss(nn.Module):
    """Bidirectional contrastive loss of ConVIRT with temperature tau and direction weight lam.

    tau: temperature (initial value when learnable).
    lam: weight of the image->text direction; 1 - lam weighs text->image.
    learnable_tau: learn the temperature. It is stored as the parameter `log_tau` = log(tau) (as
        CLIP stores log(1/tau)): unconstrained, positive after exp, scale-free steps. The value used
        is exp(log_tau) clamped below at `min_tau` (CLIP clamps 1/tau at 100, i.e. tau >= 0.01, the
        smallest temperature the kernels are tested at); at the clamp log_tau gets no gradient.
    gather: compute the loss of the global batch across the default process group's ranks
        (each rank passes its own pairs). The value returned is the global loss; gradients are
        scaled so that DDP's / FSDP's averaging over ranks yields exactly the single-process
        gradient on the concatenated batch. Without an initialised group it is the local loss.
    normalize: L2-normalise the projections first (cosine similarities, the paper's loss).
    backend: "auto" | "triton" | "torch" (see `convirt_loss`).
    """

    def __init__(self, tau: float = 0.1, lam: float = 0.75, learnable_tau: bool = False,
                 gather: bool = False, *, normalize: bool = True, backend: str = "auto",
                 min_tau: float = 0.01):
        super().__init__()
        tau, min_tau = float(tau), float(min_tau)  # a 1-element tensor is read once, here
        for name, value in (("tau", tau), ("min_tau", min_tau)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"ConVIRTLoss: {name} must be a finite number > 0; got {value}")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"ConVIRTLoss: lam must lie in [0, 1]; got {lam}")
        if backend not in BACKENDS:
            raise ValueError(f"ConVIRTLoss: backend must be one of {BACKENDS}, got {backend!r}")
        self.lam, self.gather, self.normalize, self.backend = float(lam), gather, normalize, backend
        self.learnable_tau, self.min_tau = learnable_tau, float(min_tau)
        if learnable_tau:
            self.log_tau = nn.Parameter(torch.tensor(math.log(tau), dtype=torch.float32))
        else:
            self.tau_value = float(tau)

    @property
    def tau(self) -> float | Tensor:
        """The temperature in use: a float, or a 0-d tensor (with grad) when learnable."""
        if self.learnable_tau:
            return self.log_tau.clamp(min=math.log(self.min_tau)).exp()
        return self.tau_value

    def forward(self, img: Tensor, txt: Tensor) -> Tensor:
        """img, txt: (N, D) projections; returns the 0-d fp32 loss."""
        if self.gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return convirt_loss_gathered(img, txt, self.tau, self.lam, normalize=self.normalize, backend=self.backend)
        # the temperature is a checked float or exp(log_tau) >= min_tau > 0: no value check (a
        # host read, i.e. a sync per step on a GPU)
        return convirt_loss(img, txt, self.tau, self.lam, normalize=self.normalize, backend=self.backend,
                            check_tau=False)

    def extra_repr(self) -> str:
        tau = f"log_tau={self.log_tau.item():.4g}" if self.learnable_tau else f"tau={self.tau_value}"
        return f"{tau}, lam={self.lam}, gather={self.gather}, normalize={self.normalize}, backend={self.backend!r}"


@dataclass
class LossConfig:
    """The contrastive loss (PAPER.md "Loss"; convirt_fast.ConVIRTLoss)."""

    tau: float = 0.1
    """Temperature (initial value when learnable)."""
    lam: float = 0.75
    """Weight of the image->text direction; 1 - lam weighs text->image."""
    learnable_tau: bool = False
    """Learn the temperature (as CLIP does)."""
    gather: bool = False
    """Global batch: negatives from every rank (all-gather), exact global-batch gradients."""
    backend: str = "auto"
    """auto (Triton on CUDA, chunked torch otherwise), triton or torch."""

    def __post_init__(self) -> None:
        require(self.tau > 0 and math.isfinite(self.tau), "loss.tau", "finite, tau > 0", self.tau)
        require(0 <= self.lam <= 1, "loss.lam", "in [0, 1]", self.lam)
        require(self.backend in BACKENDS, "loss.backend", f"one of {BACKENDS}", self.backend)
