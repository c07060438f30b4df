"""Triton kernels of the fused ConVIRT loss, and the host functions that launch them.

The backend interface (shared with `torch_loss.py`; `convirt_loss.py` composes it into the loss):
  prologue(X, Y, tau, normalize) -> a, b, diag                                O(N*D)
  lse(X, Y, a, b, tau, d_row, d_col, offset, lam=None) -> lr, lc[, loss]    2*M*N*D FLOPs
  grad_strip(X, Y, a, b, tau, lr, lc, d_row, d_col, lam, offset, c0, c1, h_scale) -> H, hs
                                                                              2*M*(c1-c0)*D FLOPs
  scale_rows(X, a) -> a * X;  input_grad(G, X, a, grad, tau, ...) -> dL/dX (+ dL/dtau)   O(N*D)
where X (M, D) are the image rows [offset, offset + M) of the global N x N problem and Y (N, D) all
the text rows (single process: offset = 0, M = N). With a_i = 1/max(||X_i||, eps) (1 when
normalize=False) and b_j likewise, the logits are S_ij = <X_i, Y_j> a_i b_j / tau, computed tile by
tile from the raw inputs and never stored: the normalisation is a per-row and per-column scale of
the GEMM tile, so no normalised copy is made in the forward. d_row/d_col hold the positives'
logits S_ii of the rows / S_jj of the columns (the prologue's diag). The statistics are the losses
  lr_i = log sum_j exp(S_ij - S_ii)  (= l_i(v->u), image -> text)
  lc_j = log sum_i exp(S_ij - S_jj)  (= l_j(u->v) over these M rows, text -> image)
All exponentials are base 2 on S * log2(e) (exp2 is the hardware instruction).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Under TRITON_INTERPRET=1 (CPU tests) tl.dot on bf16/fp16 operands returns garbage and TF32 is not
# emulated: upcast 16-bit operands to fp32 there and always ask for IEEE fp32 products.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
EPS = 1e-12  # as F.normalize: a zero row is divided by eps instead of 0
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# A finite "minus infinity" for masked logits: exp2(NEG - m) == 0 for any finite m, and
# NEG - NEG == 0 (not nan as -inf - -inf) on rows that are entirely padding.
NEG = tl.constexpr(-1.0e30)
# Sizes and offsets are not specialised on (do_not_specialize): one compiled kernel serves every
# batch size; D and the strides still are (alignment of vectorised loads).
# Per-program column partials (max, sum-exp) cost 8 bytes x N per program; programs take several
# row blocks each once this budget is reached (N = 262,144: 128 programs, 256 MiB).
COL_SCRATCH_BYTES = 256 << 20
# The backward's gradient strip H is M x width in the input dtype: width <= 1024 columns and at most
# this many bytes (N = 262,144 in bf16: 256 columns, 128 MiB; the two GEMMs per strip then have
# K = 256 and N = 256, still large enough for cuBLAS to run near peak).
STRIP_BYTES = 128 << 20
STRIP_COLS_MAX = 1024
COL_BLOCK = 1024  # columns per program of the column merge (and loss partial sums)


@triton.jit
def _dot_tile(X, Y, rows, cols, row_ok, col_ok, D, sxm, sxd, sym, syd,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    # acc[i, j] = sum_k X[rows_i, k] * Y[cols_j, k], fp32 accumulation, D masked to BLOCK_K steps
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < D
        x = tl.load(X + rows[:, None] * sxm + ks[None, :] * sxd,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        y = tl.load(Y + cols[None, :] * sym + ks[:, None] * syd,
                    mask=col_ok[None, :] & k_ok[:, None], other=0.0)  # (BLOCK_K, BLOCK_N) = Y^T tile
        if UPCAST:
            x = x.to(tl.float32)
            y = y.to(tl.float32)
        acc = tl.dot(x, y, acc, input_precision=PRECISION)
    return acc


@triton.jit(do_not_specialize=["M"])
def _prologue_kernel(X, Y, A, B, DIAG, TAU, M, D, sxm, sxd, sym, syd, eps,
                     NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # a_i = 1/max(||X_i||, eps), b_i = 1/max(||Y_i||, eps), DIAG_i = <X_i, Y_i> a_i b_i / tau = S_ii
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M
    xx = tl.zeros([BLOCK_M], dtype=tl.float32)
    yy = tl.zeros([BLOCK_M], dtype=tl.float32)
    xy = tl.zeros([BLOCK_M], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        mask = row_ok[:, None] & (ds < D)[None, :]
        x = tl.load(X + rows[:, None] * sxm + ds[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(Y + rows[:, None] * sym + ds[None, :] * syd, mask=mask, other=0.0).to(tl.float32)
        xx += tl.sum(x * x, 1)
        yy += tl.sum(y * y, 1)
        xy += tl.sum(x * y, 1)
    if NORMALIZE:
        a = 1.0 / tl.maximum(tl.sqrt(xx), eps)
        b = 1.0 / tl.maximum(tl.sqrt(yy), eps)
    else:
        a = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
        b = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    tau = tl.load(TAU).to(tl.float32)
    tl.store(A + rows, a, mask=row_ok)
    tl.store(B + rows, b, mask=row_ok)
    tl.store(DIAG + rows, xy * a * b / tau, mask=row_ok)


@triton.jit(do_not_specialize=["M", "N", "offset", "blocks_per_prog"])
def _lse_fwd_kernel(X, Y, A, B, TAU, DIAG_ROW, DIAG_COL, ROW_LOSS, COL_M, COL_S, M, N, D, offset,
                    blocks_per_prog, sxm, sxd, sym, syd,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    # Program p owns row blocks [p*bpp, (p+1)*bpp) and loops over all column blocks (one GEMM pass).
    # Logits are shifted by their positive's: rows by S_ii, columns by S_jj (a positive itself is
    # exactly 0), so the log-sum-exps below are the per-pair losses themselves, accurate even when
    # tiny (no difference of two numbers of size 1/tau). In log2 units, s = S * log2(e):
    #   row loss, online (flash-attention style) over t_ij = s_ij - s_ii:  m <- max(m, max_j t_ij),
    #     l <- l * 2^(m_old - m) + sum_j 2^(t_ij - m);   lr_i = (m + log2 l) * ln 2 = l_i(v->u)
    #   column partials over this program's rows of u_ij = s_ij - s_jj, merged into its own scratch
    #   row COL_*[p, :] (only this program touches it, so no atomics):
    #     cm_j = max_i u_ij,  cs_j = sum_i 2^(u_ij - cm_j), combined with the previous row blocks'.
    pid = tl.program_id(0)
    scale = LOG2E / tl.load(TAU).to(tl.float32)
    first_rb = pid * blocks_per_prog
    last_rb = tl.minimum(first_rb + blocks_per_prog, tl.cdiv(M, BLOCK_M))
    scratch = pid.to(tl.int64) * N
    for rb in range(first_rb, last_rb):
        rows = (rb * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        row_ok = rows < M
        a = tl.load(A + rows, mask=row_ok, other=0.0) * scale
        d_row = tl.load(DIAG_ROW + rows, mask=row_ok, other=0.0) * LOG2E
        m_i = tl.full([BLOCK_M], NEG, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        for cb in range(0, tl.cdiv(N, BLOCK_N)):
            cols = (cb * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
            col_ok = cols < N
            b = tl.load(B + cols, mask=col_ok, other=0.0)
            d_col = tl.load(DIAG_COL + cols, mask=col_ok, other=0.0) * LOG2E
            acc = _dot_tile(X, Y, rows, cols, row_ok, col_ok, D, sxm, sxd, sym, syd,
                            BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION)
            s = acc * a[:, None] * b[None, :]
            ok = row_ok[:, None] & col_ok[None, :]
            is_pos = cols[None, :] == rows[:, None] + offset
            t = tl.where(ok, tl.where(is_pos, 0.0, s - d_row[:, None]), NEG)
            u = tl.where(ok, tl.where(is_pos, 0.0, s - d_col[None, :]), NEG)
            m_new = tl.maximum(m_i, tl.max(t, 1))
            l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(t - m_new[:, None]), 1)
            m_i = m_new
            cm = tl.max(u, 0)
            cs = tl.sum(tl.exp2(u - cm[None, :]), 0)
            # the first row block of a program finds nothing to merge: masked load gives (NEG, 0)
            prev = col_ok & (rb > first_rb)
            pm = tl.load(COL_M + scratch + cols, mask=prev, other=NEG)
            ps = tl.load(COL_S + scratch + cols, mask=prev, other=0.0)
            new_m = tl.maximum(pm, cm)
            new_s = ps * tl.exp2(pm - new_m) + cs * tl.exp2(cm - new_m)
            tl.store(COL_M + scratch + cols, new_m, mask=col_ok)
            tl.store(COL_S + scratch + cols, new_s, mask=col_ok)
            # the next row block re-reads these addresses, perhaps from other threads of this program
            tl.debug_barrier()
        tl.store(ROW_LOSS + rows, (m_i + tl.log2(l_i)) * LN2, mask=row_ok)


@triton.jit(do_not_specialize=["N", "n_parts"])
def _col_lse_kernel(COL_M, COL_S, N, n_parts, ROW_LOSS, COL_LOSS, LOSS_PART, lam, inv_n,
                    WITH_LOSS: tl.constexpr, BLOCK: tl.constexpr):
    # lc_j = log sum_p cs_pj 2^(cm_pj) (an online merge over the programs' partials), natural units:
    # the column loss l_j(u->v) over these rows.
    # WITH_LOSS (single process, M == N): LOSS_PART[block] = sum_j (lam lr_j + (1-lam) lc_j) / N
    cols = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    ok = cols < N
    m = tl.full([BLOCK], NEG, dtype=tl.float32)
    s = tl.zeros([BLOCK], dtype=tl.float32)
    for p in range(0, n_parts):
        pm = tl.load(COL_M + p * N + cols, mask=ok, other=NEG)
        ps = tl.load(COL_S + p * N + cols, mask=ok, other=0.0)
        new_m = tl.maximum(m, pm)
        s = s * tl.exp2(m - new_m) + ps * tl.exp2(pm - new_m)
        m = new_m
    c = (m + tl.log2(tl.where(ok, s, 1.0))) * LN2  # padding columns: no log2(0)
    tl.store(COL_LOSS + cols, c, mask=ok)
    if WITH_LOSS:
        r = tl.load(ROW_LOSS + cols, mask=ok, other=0.0)
        term = tl.where(ok, lam * r + (1.0 - lam) * c, 0.0)
        tl.store(LOSS_PART + tl.program_id(0), tl.sum(term, 0) * inv_n)


@triton.jit
def _expm1_neg(x):
    # exp(-x) - 1 for x >= 0 without cancellation near 0 (series where exp(-x) rounds toward 1)
    return tl.where(x < 1e-2, -x * (1.0 - x * (0.5 - x / 6.0)), tl.exp(-x) - 1.0)


@triton.jit(do_not_specialize=["M", "N", "col0", "col1", "offset"])
def _grad_strip_kernel(X, Y, A, B, TAU, ROW_LOSS, COL_LOSS, DIAG_ROW, DIAG_COL, H, HS, M, N, D,
                       col0, col1, offset,
                       lam, h_scale, sxm, sxd, sym, syd, shm,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    # Recompute the tile, then the gradient of N*L w.r.t. S, times h_scale, with the shifts above:
    #   P_ij = exp(S_ij - S_ii - lr_i),  Q_ij = exp(S_ij - S_jj - lc_j)   (exponents <= 0)
    #   H_ij = h_scale * (lam P_ij + (1-lam) Q_ij)  off the positives,
    #   H_ii = h_scale * (lam expm1(-lr_i) + (1-lam) expm1(-lc_i))  (P_ii - 1 without cancellation)
    # HS[program] = sum_ij (N G_ij) S_ij over the tile (for dL/dtau = -(1/tau) sum_ij G_ij S_ij) as
    #   sum_ij lam P_ij (S_ij - S_ii) + (1-lam) Q_ij (S_ij - S_jj)  (rows of P, columns of Q sum to 1)
    # which needs neither the -1 of the positives nor any number of size 1/tau.
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = (col0 + tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_ok = rows < M
    col_ok = cols < col1
    scale = LOG2E / tl.load(TAU).to(tl.float32)
    a = tl.load(A + rows, mask=row_ok, other=0.0) * scale
    b = tl.load(B + cols, mask=col_ok, other=0.0)
    lr = tl.load(ROW_LOSS + rows, mask=row_ok, other=0.0)
    lc = tl.load(COL_LOSS + cols, mask=col_ok, other=0.0)
    d_row = tl.load(DIAG_ROW + rows, mask=row_ok, other=0.0) * LOG2E
    d_col = tl.load(DIAG_COL + cols, mask=col_ok, other=0.0) * LOG2E
    acc = _dot_tile(X, Y, rows, cols, row_ok, col_ok, D, sxm, sxd, sym, syd,
                    BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION)
    s = acc * a[:, None] * b[None, :]
    ok = row_ok[:, None] & col_ok[None, :]
    is_pos = cols[None, :] == rows[:, None] + offset
    t = tl.where(is_pos, 0.0, s - d_row[:, None])
    u = tl.where(is_pos, 0.0, s - d_col[None, :])
    p = lam * tl.exp2(t - (lr * LOG2E)[:, None])
    q = (1.0 - lam) * tl.exp2(u - (lc * LOG2E)[None, :])
    hs = tl.where(ok, p * t + q * u, 0.0)
    tl.store(HS + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), tl.sum(tl.sum(hs, 1), 0) * LN2)
    pos = lam * _expm1_neg(lr)[:, None] + (1.0 - lam) * _expm1_neg(lc)[None, :]
    h = tl.where(is_pos, pos, p + q)
    tl.store(H + rows[:, None] * shm + (cols - col0)[None, :], (h * h_scale).to(H.dtype.element_ty),
             mask=ok)


@triton.jit(do_not_specialize=["M"])
def _scale_rows_kernel(X, A, OUT, M, D, sxm, sxd, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # OUT_i = a_i X_i in X's dtype (contiguous): the normalised rows, a GEMM operand of the backward
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M
    a = tl.load(A + rows, mask=row_ok, other=0.0)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        mask = row_ok[:, None] & (ds < D)[None, :]
        x = tl.load(X + rows[:, None] * sxm + ds[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
        tl.store(OUT + rows[:, None] * D + ds[None, :], (x * a[:, None]).to(OUT.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "n_hs"])
def _input_grad_kernel(G, X, A, GRAD, TAU, OUT, HS, DTAU, M, D, n_hs, coef, tau_coef, sxm, sxd,
                       NORMALIZE: tl.constexpr, WITH_TAU: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # g_i = grad * coef / tau * G_i = dL/dx_i (G fp32, contiguous);  x_i = a_i X_i (unit rows)
    # OUT_i = dL/dX_i = a_i (g_i - x_i <x_i, g_i>)  (= g_i without normalisation), in X's dtype:
    # one pass over D for <x_i, g_i>, one to write. Program 0 with WITH_TAU also writes
    #   DTAU = -grad * tau_coef * sum(HS) / tau    (HS: the backward's partial sums of N G S)
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M
    grad = tl.load(GRAD).to(tl.float32)
    tau = tl.load(TAU).to(tl.float32)
    k = grad * coef / tau
    a = tl.load(A + rows, mask=row_ok, other=0.0)
    xg = tl.zeros([BLOCK_M], dtype=tl.float32)
    if NORMALIZE:
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            mask = row_ok[:, None] & (ds < D)[None, :]
            g = tl.load(G + rows[:, None] * D + ds[None, :], mask=mask, other=0.0) * k
            x = tl.load(X + rows[:, None] * sxm + ds[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
            xg += tl.sum(x * a[:, None] * g, 1)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        mask = row_ok[:, None] & (ds < D)[None, :]
        g = tl.load(G + rows[:, None] * D + ds[None, :], mask=mask, other=0.0) * k
        if NORMALIZE:
            x = tl.load(X + rows[:, None] * sxm + ds[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
            g = a[:, None] * (g - x * a[:, None] * xg[:, None])
        tl.store(OUT + rows[:, None] * D + ds[None, :], g.to(OUT.dtype.element_ty), mask=mask)
    if WITH_TAU:
        if tl.program_id(0) == 0:
            total = tl.zeros([1024], dtype=tl.float32)
            for i0 in range(0, n_hs, 1024):
                idx = i0 + tl.arange(0, 1024)
                total += tl.load(HS + idx, mask=idx < n_hs, other=0.0)
            tl.store(DTAU, -grad * tau_coef * tl.sum(total, 0) / tau)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _config(M: int, N: int, D: int, dtype: torch.dtype):
    """Tile sizes: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). tl.dot needs dims >= 16."""
    if INTERPRET:  # numpy emulation: few large programs are fastest
        return max(16, min(64, _pow2(M))), max(16, min(64, _pow2(N))), max(16, min(64, _pow2(D))), 4, 1
    block_m = max(16, min(128, _pow2(M)))
    block_n = max(16, min(64, _pow2(N)))
    block_k = max(16, min(64 if dtype != torch.float32 else 32, _pow2(D)))
    return block_m, block_n, block_k, (8 if block_m >= 128 else 4), 3


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow torch's matmul setting (TF32 only where the user allowed it); ignored for 16-bit
    if INTERPRET or dtype != torch.float32 or torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _upcast(dtype: torch.dtype) -> bool:
    return INTERPRET and dtype != torch.float32


def prologue(X: torch.Tensor, Y: torch.Tensor, tau: torch.Tensor, normalize: bool):
    M, D = X.shape
    a = torch.empty(M, device=X.device, dtype=torch.float32)
    b = torch.empty_like(a)
    diag = torch.empty_like(a)
    block_m, block_d = _rows_config(D)
    _prologue_kernel[(triton.cdiv(M, block_m),)](
        X, Y, a, b, diag, tau, M, D, X.stride(0), X.stride(1), Y.stride(0), Y.stride(1), EPS,
        NORMALIZE=normalize, BLOCK_M=block_m, BLOCK_D=block_d)
    return a, b, diag


def lse(X, Y, a, b, tau, d_row, d_col, offset: int = 0, lam=None):
    """Row losses lr (M,) and column losses lc (N,) over these rows; with lam (M == N) the loss."""
    M, D = X.shape
    N = Y.shape[0]
    block_m, block_n, block_k, warps, stages = _config(M, N, D, X.dtype)
    n_row_blocks = triton.cdiv(M, block_m)
    max_progs = max(1, COL_SCRATCH_BYTES // (8 * N))
    blocks_per_prog = triton.cdiv(n_row_blocks, min(n_row_blocks, max_progs))
    n_progs = triton.cdiv(n_row_blocks, blocks_per_prog)
    col_m = torch.empty((n_progs, N), device=X.device, dtype=torch.float32)
    col_s = torch.empty_like(col_m)
    lr = torch.empty(M, device=X.device, dtype=torch.float32)
    _lse_fwd_kernel[(n_progs,)](
        X, Y, a, b, tau, d_row, d_col, lr, col_m, col_s, M, N, D, offset, blocks_per_prog,
        X.stride(0), X.stride(1), Y.stride(0), Y.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, UPCAST=_upcast(X.dtype),
        PRECISION=_precision(X.dtype), num_warps=warps, num_stages=stages)
    lc = torch.empty(N, device=X.device, dtype=torch.float32)
    block = min(COL_BLOCK, _pow2(N))
    n_blocks = triton.cdiv(N, block)
    with_loss = lam is not None
    # one block writes the loss itself (a 0-d tensor): no extra reduction launch at small N
    part = torch.empty(() if n_blocks == 1 else n_blocks, device=X.device, dtype=torch.float32)
    _col_lse_kernel[(n_blocks,)](
        col_m, col_s, N, n_progs, lr, lc, part, float(lam) if with_loss else 0.0, 1.0 / N,
        WITH_LOSS=with_loss, BLOCK=block)
    if not with_loss:
        return lr, lc
    return lr, lc, (part if n_blocks == 1 else part.sum())


def strip_width(M: int, N: int, dtype: torch.dtype, device: torch.device) -> int:
    elt = torch.finfo(dtype).bits // 8
    width = min(STRIP_COLS_MAX, max(64, STRIP_BYTES // (max(M, 1) * elt)))
    return min(N, width)


def grad_strip(X, Y, a, b, tau, lr, lc, d_row, d_col, lam: float, offset: int, c0: int, c1: int,
               h_scale: float):
    """(H, hs): H = h_scale * N * dL/dS[:, c0:c1] (M x (c1 - c0)) in the input dtype (for the
    tensor-core GEMMs) and hs = sum_ij (N dL/dS_ij) S_ij over the strip (0-d fp32, for d tau)."""
    M, D = X.shape
    N = Y.shape[0]
    H = torch.empty((M, c1 - c0), device=X.device, dtype=X.dtype)
    block_m, block_n, block_k, warps, stages = _config(M, c1 - c0, D, X.dtype)
    grid = (triton.cdiv(M, block_m), triton.cdiv(c1 - c0, block_n))
    hs = torch.empty(grid, device=X.device, dtype=torch.float32)
    _grad_strip_kernel[grid](
        X, Y, a, b, tau, lr, lc, d_row, d_col, H, hs, M, N, D, c0, c1, offset, float(lam), float(h_scale),
        X.stride(0), X.stride(1), Y.stride(0), Y.stride(1), H.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, UPCAST=_upcast(X.dtype),
        PRECISION=_precision(X.dtype), num_warps=warps, num_stages=stages)
    return H, hs.view(-1)


def _rows_config(D: int):
    return 16, max(16, min(128 if not INTERPRET else 512, _pow2(D)))


def scale_rows(X: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """x = a * X in X's dtype (contiguous)."""
    M, D = X.shape
    out = torch.empty((M, D), device=X.device, dtype=X.dtype)
    block_m, block_d = _rows_config(D)
    _scale_rows_kernel[(triton.cdiv(M, block_m),)](X, a, out, M, D, X.stride(0), X.stride(1),
                                                   BLOCK_M=block_m, BLOCK_D=block_d)
    return out


def input_grad(G, X, a, grad, tau, coef: float, normalize: bool, out, hs=None, tau_coef=None, d_tau=None):
    """out = dL/dX from G (fp32, M x D, contiguous): see _input_grad_kernel; with hs, also d_tau."""
    M, D = X.shape
    block_m, block_d = _rows_config(D)
    with_tau = hs is not None
    _input_grad_kernel[(triton.cdiv(M, block_m),)](
        G, X, a, grad, tau, out, hs if with_tau else G, d_tau if with_tau else G, M, D,
        hs.numel() if with_tau else 0, float(coef), float(tau_coef or 0.0), X.stride(0), X.stride(1),
        NORMALIZE=normalize, WITH_TAU=with_tau, BLOCK_M=block_m, BLOCK_D=block_d)
