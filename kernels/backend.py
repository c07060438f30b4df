"""The typed interface between the loss (`convirt_loss.py`, `distributed.py`) and its backends.

Both `triton_loss` and `torch_loss` are modules that satisfy `LossBackend` structurally (a module
is a valid Protocol implementation for type checkers). The per-row statistics travel in one
`PairStats` object instead of long positional lists, where a swapped pair (say d_row and d_col,
identical in the single-process tests) would go unnoticed.

Problem block: X (M, D) are the image rows [offset, offset + M) of the global N x N problem, Y
(N, D) all the text rows (single process: offset = 0, M = N); S_ij = <X_i, Y_j> a_i b_j / tau.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class PairStats:
    """O(N) statistics of one problem block, all fp32.

    a: (M,) 1/max(||X_i||, eps) of the image rows (1 without normalisation).
    b: (N,) the same for the text rows.
    d_row: (M,) S_ii, the positive logit of each image row (the prologue's diag).
    d_col: (N,) S_jj, the positive logit of each text column (gathered from every rank).
    offset: the global index of X's first row: the positive of row i is column offset + i.
    lr: (M,) row losses log sum_j exp(S_ij - S_ii) = l_i(v->u); None before `lse`.
    lc: (N,) column losses log sum_i exp(S_ij - S_jj) over these rows; None before `lse`.
    """

    a: Tensor
    b: Tensor
    d_row: Tensor
    d_col: Tensor
    offset: int = 0
    lr: Tensor | None = None
    lc: Tensor | None = None

    def __post_init__(self):
        m, n = self.a.shape[0], self.b.shape[0]
        if self.d_row.shape != (m,) or self.d_col.shape != (n,):
            raise ValueError(f"PairStats: a {tuple(self.a.shape)}, d_row {tuple(self.d_row.shape)}, "
                             f"b {tuple(self.b.shape)}, d_col {tuple(self.d_col.shape)} disagree")
        if not 0 <= self.offset <= n - m:
            raise ValueError(f"PairStats: offset {self.offset} puts {m} rows outside {n} columns")

    def with_losses(self, lr: Tensor, lc: Tensor) -> "PairStats":
        return dataclasses.replace(self, lr=lr, lc=lc)


class LossBackend(Protocol):
    """What a backend provides; FLOPs per call for an M x N block of dimension D."""

    def prologue(self, X: Tensor, Y: Tensor, tau: Tensor, normalize: bool
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """(a, b, diag): row scales of X and Y (same length) and S_ii. O(M D)."""

    def lse(self, X: Tensor, Y: Tensor, tau: Tensor, stats: PairStats, lam: float | None = None
            ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(lr, lc, loss): row and column losses; the 0-d loss when lam is given (M == N). 2 M N D."""

    def strip_width(self, M: int, N: int, D: int, dtype: torch.dtype, device: torch.device) -> int:
        """Columns per gradient strip (bounded memory, few enough launches)."""

    def grad_strip(self, X: Tensor, Y: Tensor, tau: Tensor, stats: PairStats, lam: float, c0: int,
                   c1: int, h_scale: float) -> tuple[Tensor, Tensor]:
        """(H, hs): H = h_scale N dL/dS[:, c0:c1] (GEMM dtype), hs: 1-D fp32 partial sums of
        sum_ij (N dL/dS_ij) S_ij over the strip. 2 M (c1 - c0) D."""

    def scale_rows(self, X: Tensor, a: Tensor) -> Tensor:
        """a * X in X's dtype, contiguous. O(M D)."""

    def input_grad(self, G: Tensor, X: Tensor, a: Tensor, grad: Tensor, tau: Tensor, coef: float,
                   normalize: bool, out: Tensor, *, hs: Tensor | None = None,
                   tau_coef: float | None = None, d_tau: Tensor | None = None) -> None:
        """out = dL/dX from G (fp32); with hs also d_tau = -grad tau_coef sum(hs) / tau. O(M D)."""
