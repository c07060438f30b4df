"""The chunked plain-torch backend of the ConVIRT loss: the same interface as `triton_loss.py`.

It never holds more than CHUNK_ELEMS logits at once: the forward walks row chunks (rows x N),
merging column log-sum-exps as it goes; the backward (driven by `convirt_loss.py`) asks for column
strips (M x width) of the gradient, recomputed from the inputs. Memory is O(N * chunk + N * D).

Matmuls run in fp32 on a CPU (16-bit GEMMs are slow and less accurate there) and in the input
dtype on a GPU (tensor cores); log-sum-exps and exponentials are always fp32.
"""

from __future__ import annotations

import torch

EPS = 1e-12  # as F.normalize
# Elements of one logits chunk: 2**22 fp32 = 16 MiB on a CPU, a few such temporaries at a time;
# 2**26 (256 MiB) on a GPU, where small chunks would leave it launch-bound.
CHUNK_ELEMS = 1 << 22
CUDA_CHUNK_ELEMS = 1 << 26


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.device.type == "cpu" else x.dtype


def _rows_per_chunk(n_cols: int, device: torch.device) -> int:
    elems = CUDA_CHUNK_ELEMS if device.type == "cuda" else CHUNK_ELEMS
    return max(1, elems // max(n_cols, 1))


def prologue(X: torch.Tensor, Y: torch.Tensor, tau: torch.Tensor, normalize: bool):
    """a_i = 1/max(||X_i||, eps), b_i likewise (1 without normalize), diag_i = S_ii; fp32."""
    M = X.shape[0]
    a = torch.empty(M, device=X.device, dtype=torch.float32)
    b = torch.empty_like(a)
    diag = torch.empty_like(a)
    step = _rows_per_chunk(X.shape[1], X.device)
    for r0 in range(0, M, step):
        x, y = X[r0:r0 + step].float(), Y[r0:r0 + step].float()
        if normalize:
            a[r0:r0 + step] = 1.0 / torch.linalg.vector_norm(x, dim=1).clamp_min(EPS)
            b[r0:r0 + step] = 1.0 / torch.linalg.vector_norm(y, dim=1).clamp_min(EPS)
        else:
            a[r0:r0 + step] = 1.0
            b[r0:r0 + step] = 1.0
        diag[r0:r0 + step] = (x * y).sum(1)
    diag *= a * b / tau.float()
    return a, b, diag


def _logits(X, Y, a, b, tau):
    cd = compute_dtype(X)
    s = (X.to(cd) @ Y.to(cd).t()).float()
    return s.mul_((a / tau.float())[:, None]).mul_(b[None, :])  # in place: one chunk-sized tensor


def _shifted(s, d_row, d_col, offset: int, c0: int):
    """(t, u): S - S_ii by rows and S - S_jj by columns, positives exactly 0 (triton_loss docs).
    s: logits of rows [0, M) x columns [c0, c0 + w); t reuses s's storage."""
    M, w = s.shape
    lo = max(c0 - offset, 0)
    i = torch.arange(lo, max(lo, min(c0 + w - offset, M)), device=s.device)
    j = i + offset - c0
    u = s - d_col[None, c0:c0 + w]
    t = s.sub_(d_row[:, None])
    t[i, j] = 0.0
    u[i, j] = 0.0
    return t, u, (i, j)


def lse(X, Y, a, b, tau, d_row, d_col, offset: int = 0, lam=None):
    """Row losses lr (M,) and column losses lc (N,) over these rows; with lam (M == N) the loss."""
    M, N = X.shape[0], Y.shape[0]
    lr = torch.empty(M, device=X.device, dtype=torch.float32)
    lc = torch.full((N,), float("-inf"), device=X.device, dtype=torch.float32)
    step = _rows_per_chunk(N, X.device)
    for r0 in range(0, M, step):
        s = _logits(X[r0:r0 + step], Y, a[r0:r0 + step], b, tau)
        t, u, _ = _shifted(s, d_row[r0:r0 + step], d_col, offset + r0, 0)
        lr[r0:r0 + step] = torch.logsumexp(t, 1)
        lc = torch.logaddexp(lc, torch.logsumexp(u, 0))
    if lam is None:
        return lr, lc
    return lr, lc, (lam * lr.sum() + (1.0 - lam) * lc.sum()) / N


def strip_width(M: int, N: int, dtype: torch.dtype, device: torch.device) -> int:
    return min(N, _rows_per_chunk(M, device))


def grad_strip(X, Y, a, b, tau, lr, lc, d_row, d_col, lam: float, offset: int, c0: int, c1: int,
               h_scale: float):
    """(H, hs): H = h_scale * N * dL/dS[:, c0:c1] (M x (c1 - c0)) in compute_dtype(X), and
    hs = sum_ij (N dL/dS_ij) S_ij over the strip (fp32), as triton_loss._grad_strip_kernel."""
    s = _logits(X, Y[c0:c1], a, b[c0:c1], tau)
    t, u, (i, j) = _shifted(s, d_row, d_col, offset, c0)
    p = torch.sub(t, lr[:, None]).exp_().mul_(lam)
    q = torch.sub(u, lc[None, c0:c1]).exp_().mul_(1.0 - lam)
    hs = (torch.dot(p.flatten(), t.flatten()) + torch.dot(q.flatten(), u.flatten())).reshape(1)
    h = p.add_(q)
    h[i, j] = lam * torch.expm1(-lr[i]) + (1.0 - lam) * torch.expm1(-lc[j + c0])  # P_ii - 1, exactly
    return (h.mul_(h_scale)).to(compute_dtype(X)), hs


def scale_rows(X: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """x = a * X in X's dtype (the normalised rows, a GEMM operand of the backward)."""
    out = torch.empty_like(X, memory_format=torch.contiguous_format)
    step = _rows_per_chunk(X.shape[1], X.device)
    for i in range(0, X.shape[0], step):
        out[i:i + step] = X[i:i + step].float() * a[i:i + step, None]
    return out


def input_grad(G, X, a, grad, tau, coef: float, normalize: bool, out, hs=None, tau_coef=None, d_tau=None):
    """out = dL/dX (X's dtype) from G = dL/dx * tau / (grad * coef), fp32, chunk by chunk:
    g = grad * coef / tau * G,  dL/dX_i = a_i (g_i - x_i <x_i, g_i>)  (g itself without normalize).
    With hs: d_tau = -grad * tau_coef * sum(hs) / tau."""
    k = grad.float() * coef / tau.float()
    step = _rows_per_chunk(X.shape[1], X.device)
    for i in range(0, X.shape[0], step):
        g = G[i:i + step] * k
        if normalize:
            x = X[i:i + step].float() * a[i:i + step, None]
            g = a[i:i + step, None] * (g - x * (x * g).sum(1, keepdim=True))
        out[i:i + step] = g
    if hs is not None:
        d_tau.copy_(-grad.float() * tau_coef * hs.sum() / tau.float())
