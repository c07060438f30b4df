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
# Elements of one logits chunk: 2**22 fp32 = 16 MiB, a few such temporaries at a time.
CHUNK_ELEMS = 1 << 22


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.device.type == "cpu" else x.dtype


def _rows_per_chunk(n_cols: int) -> int:
    return max(1, CHUNK_ELEMS // max(n_cols, 1))


def prologue(X: torch.Tensor, Y: torch.Tensor, tau: torch.Tensor, normalize: bool):
    """a_i = 1/max(||X_i||, eps), b_i likewise (1 without normalize), diag_i = S_ii; fp32."""
    M = X.shape[0]
    a = torch.empty(M, device=X.device, dtype=torch.float32)
    b = torch.empty_like(a)
    diag = torch.empty_like(a)
    step = _rows_per_chunk(X.shape[1])
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


def lse(X, Y, a, b, tau, diag=None, lam=None):
    """Row LSE r (M,) and column LSE c (N,) over these rows; with lam (M == N) also the loss."""
    M, N = X.shape[0], Y.shape[0]
    r = torch.empty(M, device=X.device, dtype=torch.float32)
    c = torch.full((N,), float("-inf"), device=X.device, dtype=torch.float32)
    step = _rows_per_chunk(N)
    for r0 in range(0, M, step):
        s = _logits(X[r0:r0 + step], Y, a[r0:r0 + step], b, tau)
        r[r0:r0 + step] = torch.logsumexp(s, 1)
        c = torch.logaddexp(c, torch.logsumexp(s, 0))
    if lam is None:
        return r, c
    return r, c, (lam * r.sum() + (1.0 - lam) * c.sum() - diag.sum()) / N


def strip_width(M: int, N: int, dtype: torch.dtype) -> int:
    return min(N, _rows_per_chunk(M))


def grad_strip(X, Y, a, b, tau, r, c, d_row, d_col, lam: float, offset: int, c0: int, c1: int,
               h_scale: float):
    """(H, hs): H = h_scale * N * dL/dS[:, c0:c1] (M x (c1 - c0)) in compute_dtype(X), and
    hs = sum_ij (N dL/dS_ij) S_ij over the strip in fp32 (for d tau; written without the -1 of the
    positives, which rounds away, as in triton_loss._grad_strip_kernel)."""
    s = _logits(X, Y[c0:c1], a, b[c0:c1], tau)
    p = torch.sub(s, r[:, None]).exp_().mul_(lam)
    q = torch.sub(s, c[None, c0:c1]).exp_().mul_(1.0 - lam)
    # positives: column offset + i of row i, where it falls inside this strip
    i = torch.arange(max(c0 - offset, 0), min(c1 - offset, X.shape[0]), device=X.device)
    j = i + offset - c0
    t = s.sub_(d_row[:, None])  # s is no longer needed: t = S_ij - S_ii, then S_ij - S_jj
    t[i, j] = 0.0  # a positive's own term is exactly 0
    hs = torch.dot(p.flatten(), t.flatten())
    t.add_(d_row[:, None]).sub_(d_col[None, c0:c1])
    t[i, j] = 0.0
    hs = (hs + torch.dot(q.flatten(), t.flatten())).reshape(1)
    h = p.add_(q)
    h[i, j] -= 1.0
    return (h.mul_(h_scale)).to(compute_dtype(X)), hs


def scale_rows(X: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """x = a * X in X's dtype (the normalised rows, a GEMM operand of the backward)."""
    out = torch.empty_like(X, memory_format=torch.contiguous_format)
    step = _rows_per_chunk(X.shape[1])
    for i in range(0, X.shape[0], step):
        out[i:i + step] = X[i:i + step].float() * a[i:i + step, None]
    return out


def input_grad(G, X, a, grad, tau, coef: float, normalize: bool, out, hs=None, tau_coef=None, d_tau=None):
    """out = dL/dX (X's dtype) from G = dL/dx * tau / (grad * coef), fp32, chunk by chunk:
    g = grad * coef / tau * G,  dL/dX_i = a_i (g_i - x_i <x_i, g_i>)  (g itself without normalize).
    With hs: d_tau = -grad * tau_coef * sum(hs) / tau."""
    k = grad.float() * coef / tau.float()
    step = _rows_per_chunk(X.shape[1])
    for i in range(0, X.shape[0], step):
        g = G[i:i + step] * k
        if normalize:
            x = X[i:i + step].float() * a[i:i + step, None]
            g = a[i:i + step, None] * (g - x * (x * g).sum(1, keepdim=True))
        out[i:i + step] = g
    if hs is not None:
        d_tau.copy_(-grad.float() * tau_coef * hs.sum() / tau.float())
