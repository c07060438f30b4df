"""The chunked plain-torch backend of the ConVIRT loss: `backend.LossBackend`, as `triton_loss.py`.

It never holds more than CHUNK_ELEMS logits at once: the forward walks row chunks (rows x N),
merging column log-sum-exps as it goes; the backward (driven by `convirt_loss.py`) asks for column
strips (M x width) of the gradient, recomputed from the inputs. Memory is O(N * chunk + N * D).

Small problems (N x N <= DIRECT_ELEMS logits) take the direct path instead (`direct_loss` in
eager mode, `direct_forward` / `direct_backward` behind the raw ops): the same formulas on the whole
logits matrix at once, in fewer torch ops than the plain reference (the chunked path's per-chunk
bookkeeping made it 0.53x the reference at N = 32 on a CPU).

Matmuls run in fp32 on a CPU (16-bit GEMMs are slow and less accurate there) and in the input
dtype on a GPU (tensor cores); log-sum-exps and exponentials are always fp32.
"""

from __future__ import annotations

import torch

from .backend import PairStats

EPS = 1e-12  # as F.normalize
# Elements of one logits chunk: 2**22 fp32 = 16 MiB on a CPU, a few such temporaries at a time;
# 2**26 (256 MiB) on a GPU, where small chunks would leave it launch-bound.
CHUNK_ELEMS = 1 << 22
CUDA_CHUNK_ELEMS = 1 << 26
# Below this many logits (N = 1,024) the torch backend computes directly: an N x N fp32 matrix of
# at most 4 MiB, a few of them alive at once (the reference holds as many).
DIRECT_ELEMS = 1 << 20


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


def lse(X, Y, tau, stats: PairStats, lam=None):
    """(lr, lc, loss): row losses (M,), column losses (N,) over these rows; with lam (M == N) the
    0-d loss (else None)."""
    a, b, d_row, d_col, offset = stats.a, stats.b, stats.d_row, stats.d_col, stats.offset
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
        return lr, lc, None
    return lr, lc, (lam * lr.sum() + (1.0 - lam) * lc.sum()) / N


def strip_width(M: int, N: int, D: int, dtype: torch.dtype, device: torch.device) -> int:
    return min(N, _rows_per_chunk(M, device))


def grad_strip(X, Y, tau, stats: PairStats, lam: float, c0: int, c1: int, h_scale: float):
    """(H, hs): H = h_scale * N * dL/dS[:, c0:c1] (M x (c1 - c0)) in compute_dtype(X), and
    hs = sum_ij (N dL/dS_ij) S_ij over the strip (fp32, shape (1,)), as triton_loss._grad_strip_kernel."""
    a, b, d_row, d_col, offset, lr, lc = (stats.a, stats.b, stats.d_row, stats.d_col, stats.offset,
                                          stats.lr, stats.lc)
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


def input_grad(G, X, a, grad, tau, coef: float, normalize: bool, out, *, hs=None, tau_coef=None, d_tau=None):
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


# ------------------------------------------------------------------------- small N: direct path
def use_direct(M: int, N: int) -> bool:
    return M * N <= DIRECT_ELEMS


def _direct_stats(img, txt, tau, normalize: bool):
    """(x, y, a, b, log_p, log_q, s) on whole N x N matrices: the normalised rows (compute
    dtype) and their scales, log P and log Q (fp32) and the logits S (S_ii: its diagonal).
    Logits are shifted by their positive's first, t = S - S_ii, u = S - S_jj (exactly 0 for a
    positive, as `_shifted`), so log_softmax(t) = t - lr and lr = -log_softmax(t)_ii with no
    difference of numbers of size 1/tau; one fused log_softmax per direction is also cheaper than
    logsumexp's several ops."""
    cd = compute_dtype(img)
    x, y = img.to(cd), txt.to(cd)
    if normalize:
        a = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32).clamp_min_(EPS).reciprocal_()
        b = torch.linalg.vector_norm(y, dim=1, dtype=torch.float32).clamp_min_(EPS).reciprocal_()
        x, y = x * a.to(cd)[:, None], y * b.to(cd)[:, None]
    else:
        a = b = torch.ones(img.shape[0], device=img.device, dtype=torch.float32)
    s = torch.mm(x, y.t()).float().div_(tau.float())
    diag = s.diagonal()
    log_p = torch.log_softmax(s - diag[:, None], 1)  # log P_ij = t_ij - lr_i
    log_q = torch.log_softmax(s - diag[None, :], 0)  # log Q_ij = u_ij - lc_j
    return x, y, a, b, log_p, log_q, s


def _direct_loss(log_p, log_q, lam: float):
    """L = (1/N) sum_i [lam lr_i + (1 - lam) lc_i], lr_i = -log P_ii, lc_i = -log Q_ii."""
    n = log_p.shape[0]
    return log_p.diagonal().sum().mul_(-lam / n).add_(log_q.diagonal().sum(), alpha=-(1.0 - lam) / n)


def direct_forward(img, txt, tau, lam: float, normalize: bool):
    """(loss, a, b, lr, lc, diag) on the whole N x N logits (the chunked path's statistics)."""
    _, _, a, b, log_p, log_q, s = _direct_stats(img, txt, tau, normalize)
    return _direct_loss(log_p, log_q, lam), a, b, -log_p.diagonal(), -log_q.diagonal(), s.diagonal().clone()


def _direct_grads(grad, x, y, a, b, log_p, log_q, s, tau, lam: float, normalize: bool):
    """(d img, d txt, d tau or None): convirt_loss.py's gradient formulas on whole matrices,
    N G = lam P + (1 - lam) Q - I, its diagonal as lam expm1(-lr) + (1-lam) expm1(-lc).
    d tau (from the logits s) only when s is given."""
    n = x.shape[0]
    lr, lc = -log_p.diagonal(), -log_q.diagonal()
    p, q = log_p.exp(), log_q.exp()
    hs = None
    if s is not None:  # sum_ij N G_ij S_ij = sum_ij lam P_ij t_ij + (1-lam) Q_ij u_ij (exact t, u)
        diag = s.diagonal()
        hs = (torch.dot(p.view(-1), (s - diag[:, None]).view(-1)).mul_(lam)
              .add_(torch.dot(q.view(-1), (s - diag[None, :]).view(-1)), alpha=1.0 - lam))
    g = p.mul_(lam).add_(q, alpha=1.0 - lam)
    g.diagonal().copy_(torch.expm1(-lr).mul_(lam).add_(torch.expm1(-lc), alpha=1.0 - lam))
    k = grad.float() / tau.float() / n  # dL/dx = k (N G) y
    g = g.to(x.dtype)
    gx = torch.mm(g, y).float().mul_(k)
    gy = torch.mm(g.t(), x).float().mul_(k)
    if normalize:  # dL/dX_i = a_i (g_i - x_i <x_i, g_i>)
        xf, yf = x.float(), y.float()
        gx = gx.sub_(xf * (xf * gx).sum(1, keepdim=True)).mul_(a[:, None])
        gy = gy.sub_(yf * (yf * gy).sum(1, keepdim=True)).mul_(b[:, None])
    return gx, gy, (None if hs is None else hs.mul_(k).neg_())  # dL/dtau = -(1/(N tau)) hs


def direct_backward(grad, img, txt, tau, lr, lc, lam: float, normalize: bool):
    """(d img, d txt, d tau) for the raw op `loss_bwd`: recomputes the logits (the op saves O(N))."""
    x, y, a, b, log_p, log_q, s = _direct_stats(img, txt, tau, normalize)
    gx, gy, d_tau = _direct_grads(grad, x, y, a, b, log_p, log_q, s, tau, lam, normalize)
    return gx.to(img.dtype), gy.to(txt.dtype), d_tau


class DirectLossFunction(torch.autograd.Function):
    """Small N in eager mode: the forward keeps log P and log Q (N x N, <= DIRECT_ELEMS each) for
    the backward instead of recomputing them, and d tau is formed only when tau needs it: fewer
    torch ops than the plain reference, forward and backward."""

    @staticmethod
    def forward(ctx, img, txt, tau, lam, normalize):
        x, y, a, b, log_p, log_q, s = _direct_stats(img, txt, tau, normalize)
        # the logits themselves only for d tau
        ctx.save_for_backward(x, y, a, b, log_p, log_q, s if tau.requires_grad else None, tau)
        ctx.args = (lam, normalize, img.dtype, txt.dtype)
        return _direct_loss(log_p, log_q, lam)

    @staticmethod
    def backward(ctx, grad):
        x, y, a, b, log_p, log_q, s, tau = ctx.saved_tensors
        lam, normalize, img_dtype, txt_dtype = ctx.args
        gx, gy, d_tau = _direct_grads(grad, x, y, a, b, log_p, log_q, s if ctx.needs_input_grad[2] else None,
                                      tau, lam, normalize)
        d_tau = None if d_tau is None else d_tau.to(tau.dtype).reshape(tau.shape)
        return gx.to(img_dtype), gy.to(txt_dtype), d_tau, None, None


def direct_loss(img, txt, tau, lam: float, normalize: bool):
    """The loss at small N in eager mode (no autograd Function when nothing needs a gradient)."""
    if torch.is_grad_enabled() and (img.requires_grad or txt.requires_grad or tau.requires_grad):
        return DirectLossFunction.apply(img, txt, tau, lam, normalize)
    _, _, _, _, log_p, log_q, _ = _direct_stats(img, txt, tau, normalize)
    return _direct_loss(log_p, log_q, lam)
