"""Triton kernels of the fused ConVIRT loss, and the host functions that launch them.

Implements `backend.LossBackend` (shared with `torch_loss.py`; `convirt_loss.py` composes it):
X (M, D) are the image rows [offset, offset + M) of the global N x N problem and Y (N, D) all the
text rows (single process: offset = 0, M = N). With a_i = 1/max(||X_i||, eps) (1 when
normalize=False) and b_j likewise, the logits are S_ij = <X_i, Y_j> a_i b_j / tau, computed tile by
tile from the raw inputs and never stored: the normalisation is a per-row and per-column scale of
the GEMM tile, so no normalised copy is made in the forward. d_row/d_col (`PairStats`) hold the
positives' logits S_ii of the rows / S_jj of the columns. The statistics are the losses
  lr_i = log sum_j exp(S_ij - S_ii)  (= l_i(v->u), image -> text)
  lc_j = log sum_i exp(S_ij - S_jj)  (= l_j(u->v) over these M rows, text -> image)
All exponentials are base 2 on S * log2(e) (exp2 is the hardware instruction).

Tiles. The two GEMM kernels (`_lse_fwd_kernel`, `_grad_strip_kernel`) autotune on their first
GPU run over a few configs (`FWD_CONFIGS`, `STRIP_CONFIGS`), keyed on D, the dtypes and a bucket of the sizes;
`tests/test_kernel_compile.py` compiles every one for sm_90a and fails on register spills or a
missing wgmma. Under TRITON_INTERPRET=1 there is one config and no autotuning.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .backend import PairStats

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
# batch size; D and the strides still are (alignment of vectorised loads), and so is whether the
# sizes are multiples of the tile (EVEN_*: unmasked loads and stores).

# Forward column partials (max, sum-exp) cost 8 bytes x N per row program; once this budget is
# reached, row programs take several row blocks each (N = 262,144: 128 programs, 256 MiB).
COL_SCRATCH_BYTES = 256 << 20
# Programs the forward aims at (x the SM count): with few row blocks (N = 4,096: 32 blocks of 128
# rows on 132 SMs) the columns are split between programs too, and the row partials merged after.
FWD_WAVES = 2
# The backward's gradient strip H is M x width in the input dtype. Wide strips keep mid N from
# being launch-bound (3 launches per strip): up to STRIP_COLS_MAX columns and STRIP_BYTES
# (N <= 16,384: whole or half N; N = 32,768 bf16: 4,096 columns; N = 65,536: 2,048), and at most
# what BACKWARD_BYTES leaves beside the backward's W (fp32) and normalised x (N = 262,144, D = 512:
# 256 columns, 0.875 GiB in all).
STRIP_BYTES = 256 << 20
STRIP_COLS_MAX = 8192
BACKWARD_BYTES = 896 << 20
STRIP_TILES = 4  # column tiles per program of the gradient strip: its row data loaded once for 4
MERGE_BLOCK = 1024  # rows/columns per program of the partials' merge (and loss partial sums)


# --------------------------------------------------------------------------------- tile configs
def _cfg(bm, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


# (BLOCK_M, BLOCK_N) x warps x stages; BLOCK_K is a heuristic (64 for 16-bit, 32 for fp32). Kept
# small: every config is compiled and timed on the first GPU run of each (D, dtype, size bucket).
# 128 x 128 and 256 x 64 tiles with 8 warps (two warpgroups of wgmma) for large N, 128 x 64 and
# 64 x 128 with 4 warps for mid N, 64 x 64 for small N (more programs).
# tests/test_kernel_compile.py compiles each for sm_90a and fails on spills or a missing wgmma.
# Left out because they spill under these epilogues (ptxas -v, sm_90a, D = 512 bf16; the logit
# tile, its shifted copy and the accumulator do not fit 255 registers): 128 x 256 with 8 warps
# (forward 128-208 bytes, gradient strip 1,356), 128 x 128 with 4 warps (184 / 3,020), 64 x 256
# with 4 warps (384 / 1,820).
FWD_CONFIGS = [
    _cfg(128, 128, 8, 3),
    _cfg(128, 128, 8, 2),  # 4 stages spill 72 bytes in the MULTI form (N > 65,536)
    _cfg(256, 64, 8, 3),
    _cfg(128, 64, 4, 3),
    _cfg(64, 128, 4, 3),
    _cfg(64, 64, 4, 2),
]
STRIP_CONFIGS = [
    _cfg(128, 128, 8, 3),
    _cfg(128, 128, 8, 4),
    _cfg(256, 64, 8, 3),
    _cfg(128, 64, 4, 3),
    _cfg(64, 128, 4, 3),
    _cfg(64, 64, 4, 2),
]
# fp32 inputs (accuracy runs, not a speed target): fp32 operands double the tiles' bytes, and with
# IEEE products (no tensor cores) or TF32 every larger tile spills in some variant, so fp32 runs
# 64 x 64 only (the last config of both sets; compiled clean for both precisions).
FP32_TILE = (64, 64)
INTERPRET_CONFIG = _cfg(64, 64, 4, 1)  # numpy emulation: few large programs are fastest


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def size_bucket(n: int) -> int:
    """Autotuning key for a size: its power of two, capped at 16,384. Above that the best tile no
    longer changes (every config fills the GPU) and re-tuning would cost seconds per bucket
    (N = 262,144: 2.3 s a forward call)."""
    return min(_pow2(n), 16384)


def _prune(configs, named_args, **kwargs):
    """Fewer configs to compile and time on the first run: no tile larger than the problem
    (N = 32 tries only 64 x 64), up to N = 1,024 only tiles of <= 8,192 elements, above it none of
    64 x 64 (the first GPU check compiles each survivor for every dtype and size bucket it meets);
    fp32 inputs: FP32_TILE only."""
    m = _pow2(named_args["M"])
    n = _pow2(named_args["N"] if "n_bucket" in named_args else named_args["col1"] - named_args["col0"])
    small = max(m, n) <= 1024
    fp32 = named_args["X"].dtype == torch.float32

    def fits(c):
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if fp32:
            return (bm, bn) == FP32_TILE
        return bm <= max(64, m) and bn <= max(64, n) and (bm * bn <= 128 * 64 if small else bm * bn > 64 * 64)

    return [c for c in configs if fits(c)] or configs[-1:]


def _quick_bench(kernel_call, quantiles):
    # shorter than Triton's default (25 ms warm-up, 100 ms measurement) per config: the first GPU
    # run tunes ~5 size buckets x 2 kernels x <= 6 configs inside a time-limited check
    import triton.testing

    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def _block_k(args):
    cap = 32 if args["X"].dtype == torch.float32 and not INTERPRET else 64
    return max(16, min(cap, _pow2(args["D"])))


def _autotuned(configs, key, extra_heuristics):
    """@autotune (one config under the interpreter) + the tile heuristics, around a @jit kernel."""
    heur = {"BLOCK_K": _block_k,
            "EVEN_K": lambda a: a["D"] % a["BLOCK_K"] == 0,
            "EVEN_M": lambda a: a["M"] % a["BLOCK_M"] == 0, **extra_heuristics}

    def wrap(fn):
        fn = triton.heuristics(heur)(fn)
        if INTERPRET:
            return triton.autotune(configs=[INTERPRET_CONFIG], key=key)(fn)
        return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": _prune},
                               do_bench=_quick_bench)(fn)
    return wrap


# -------------------------------------------------------------------------------------- kernels
@triton.jit
def _load_tile(P, i, j, i_ok, j_ok, si, sj, EVEN: tl.constexpr):
    # P[i, j] for index vectors i (rows of the tile) and j (columns); unmasked on full tiles
    ptrs = P + i[:, None] * si + j[None, :] * sj
    if EVEN:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=i_ok[:, None] & j_ok[None, :], other=0.0)


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


@_autotuned(FWD_CONFIGS, key=["D", "n_bucket"], extra_heuristics={
    "EVEN_N": lambda a: a["N"] % a["BLOCK_N"] == 0,
    "MULTI": lambda a: triton.cdiv(a["M"], a["BLOCK_M"]) > a["max_row_progs"]})
@triton.jit(do_not_specialize=["M", "N", "offset", "max_row_progs", "n_bucket"])
def _lse_fwd_kernel(X, Y, A, B, TAU, DIAG_ROW, ROW_M, ROW_S, COL_M, COL_S, M, N, D, offset,
                    max_row_progs, n_bucket, sxm, sxd, sym, syd,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
                    MULTI: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    # Program (p, q) owns the row blocks p, p + P, ... (P = programs on axis 0; one block unless
    # the column-scratch budget forces several: MULTI) and the q-th of Q equal runs of column
    # blocks: one GEMM pass over S in all. Logits are shifted by their positive's: rows by S_ii,
    # columns by S_jj (a positive itself is exactly 0), so the log-sum-exps are the per-pair losses
    # themselves, accurate even when tiny (no difference of two numbers of size 1/tau). In log2
    # units, s = S * log2(e):
    #   row partial, online (flash-attention style) over t_ij = s_ij - s_ii and this program's
    #     columns: m <- max(m, max_j t_ij), l <- l 2^(m_old - m) + sum_j 2^(t_ij - m)
    #     -> ROW_M/ROW_S[q, i]; `_merge_kernel` combines the Q partials into lr_i.
    #   column partial over this program's rows of u_ij = s_ij - s_jj, kept as cm_j = max_i s_ij,
    #     cs_j = sum_i 2^(s_ij - cm_j) -> COL_M/COL_S[p, j] (only this program writes those
    #     columns of row p, so no atomics); with MULTI merged with its previous row blocks'.
    #     `_merge_kernel` takes s_jj off: lc_j = (max_p cm_pj - s_jj + log2 sum_p ...) ln 2.
    # The loop runs over (column block, k) flattened, the epilogue under `if` on the last k step,
    # so the software pipeliner prefetches the next column block's tiles during the epilogue.
    pid = tl.program_id(0)
    n_row_progs = tl.num_programs(0)
    q = tl.program_id(1)
    n_cb = tl.cdiv(N, BLOCK_N)
    cb_per = tl.cdiv(n_cb, tl.num_programs(1))
    cb0 = q * cb_per
    cb1 = tl.minimum(cb0 + cb_per, n_cb)
    k_tiles = tl.cdiv(D, BLOCK_K)
    scale = LOG2E / tl.load(TAU).to(tl.float32)
    scratch = pid.to(tl.int64) * N
    for rb in range(pid, tl.cdiv(M, BLOCK_M), n_row_progs):
        rows = (rb * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        row_ok = rows < M
        a = tl.load(A + rows, mask=row_ok, other=0.0) * scale
        d_row = tl.load(DIAG_ROW + rows, mask=row_ok, other=0.0) * LOG2E
        m_i = tl.full([BLOCK_M], NEG, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        cb = cb0 - 1
        ki = k_tiles - 1
        for _ in range(0, (cb1 - cb0) * k_tiles):
            ki = tl.where(ki == k_tiles - 1, 0, ki + 1)
            cb = tl.where(ki == 0, cb + 1, cb)
            cols = (cb * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
            col_ok = cols < N
            ks = ki * BLOCK_K + tl.arange(0, BLOCK_K)
            k_ok = ks < D
            x = _load_tile(X, rows, ks, row_ok, k_ok, sxm, sxd, EVEN_M and EVEN_K)
            y = _load_tile(Y, ks, cols, k_ok, col_ok, syd, sym, EVEN_N and EVEN_K)  # Y^T tile (K, N)
            if UPCAST:
                x = x.to(tl.float32)
                y = y.to(tl.float32)
            acc = tl.dot(x, y, acc, input_precision=PRECISION)
            if ki == k_tiles - 1:
                s = acc * a[:, None] * tl.load(B + cols, mask=col_ok, other=0.0)[None, :]
                # positives exist only on tiles the diagonal j = i + offset crosses; there s is set
                # to d_row exactly (= d_col of that column: the same S_ii), so that t and the
                # columns' shifted maximum are exactly 0 for a positive
                diag0 = rb * BLOCK_M + offset  # the column of this row block's first positive
                if (cb * BLOCK_N < diag0 + BLOCK_M) & (diag0 < cb * BLOCK_N + BLOCK_N):
                    s = tl.where(cols[None, :] == rows[:, None] + offset, d_row[:, None], s)
                t = s - d_row[:, None]
                if not EVEN_N:  # padding columns out of the row sums
                    t = tl.where(col_ok[None, :], t, NEG)
                m_new = tl.maximum(m_i, tl.max(t, 1))
                l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(t - m_new[:, None]), 1)
                m_i = m_new
                if not EVEN_M:  # padding rows out of the column sums
                    s = tl.where(row_ok[:, None], s, NEG)
                # columns: max_i u_ij = max_i s_ij - s_jj (the shift is constant down a column and
                # rounding is monotonic), so the partials are taken on s and `_merge_kernel`
                # subtracts s_jj: no column vector of shifts is held here
                cm = tl.max(s, 0)
                cs = tl.sum(tl.exp2(s - cm[None, :]), 0)
                if MULTI:
                    # the program's first row block finds nothing to merge: masked load gives (NEG, 0)
                    prev = col_ok & (rb > pid)
                    pm = tl.load(COL_M + scratch + cols, mask=prev, other=NEG)
                    ps = tl.load(COL_S + scratch + cols, mask=prev, other=0.0)
                    cm_new = tl.maximum(pm, cm)
                    cs = ps * tl.exp2(pm - cm_new) + cs * tl.exp2(cm - cm_new)
                    cm = cm_new
                # (a column is loaded by every thread that holds it but stored by one of them;
                # the others' merged values are dropped, so no barrier is needed within a tile)
                tl.store(COL_M + scratch + cols, cm, mask=col_ok)
                tl.store(COL_S + scratch + cols, cs, mask=col_ok)
                acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        if MULTI:
            # the next row block re-reads this row block's column partials, perhaps from other
            # threads: one barrier per row block, outside the pipelined loop
            tl.debug_barrier()
        tl.store(ROW_M + q * M + rows, m_i, mask=row_ok)
        tl.store(ROW_S + q * M + rows, l_i, mask=row_ok)


@triton.jit
def _merge_lse(P_M, P_S, idx, ok, stride, n_parts, shift, BLOCK: tl.constexpr):
    # log sum_p s_p 2^(m_p - shift) over the partials P[p * stride + idx], natural units (online
    # merge); the shift is taken off the maximum first, so a maximum equal to it gives exactly 0
    m = tl.full([BLOCK], NEG, dtype=tl.float32)
    s = tl.zeros([BLOCK], dtype=tl.float32)
    for p in range(0, n_parts):
        pm = tl.load(P_M + p * stride + idx, mask=ok, other=NEG)
        ps = tl.load(P_S + p * stride + idx, mask=ok, other=0.0)
        new_m = tl.maximum(m, pm)
        s = s * tl.exp2(m - new_m) + ps * tl.exp2(pm - new_m)
        m = new_m
    return ((m - shift) + tl.log2(tl.where(ok, s, 1.0))) * LN2  # out-of-range entries: no log2(0)


@triton.jit(do_not_specialize=["M", "N", "n_splits", "n_parts"])
def _merge_kernel(ROW_M, ROW_S, COL_M, COL_S, DIAG_COL, M, N, n_splits, n_parts, ROW_LOSS, COL_LOSS,
                  LOSS_PART, lam, inv_n, WITH_LOSS: tl.constexpr, BLOCK: tl.constexpr):
    # lr_i from the forward's n_splits row partials (already shifted by s_ii), lc_j from its n_parts
    # column partials, shifted by s_jj here (log2 units, as the forward computed it).
    # WITH_LOSS (single process, M == N): LOSS_PART[block] = sum_j (lam lr_j + (1-lam) lc_j) / N
    idx = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    r_ok = idx < M
    c_ok = idx < N
    r = _merge_lse(ROW_M, ROW_S, idx, r_ok, M, n_splits, 0.0, BLOCK)
    d_col = tl.load(DIAG_COL + idx, mask=c_ok, other=0.0) * LOG2E
    c = _merge_lse(COL_M, COL_S, idx, c_ok, N, n_parts, d_col, BLOCK)
    tl.store(ROW_LOSS + idx, r, mask=r_ok)
    tl.store(COL_LOSS + idx, c, mask=c_ok)
    if WITH_LOSS:
        term = tl.where(c_ok, lam * r + (1.0 - lam) * c, 0.0)
        tl.store(LOSS_PART + tl.program_id(0), tl.sum(term, 0) * inv_n)


@triton.jit
def _expm1_neg(x):
    # exp(-x) - 1 for x >= 0 without cancellation near 0 (series where exp(-x) rounds toward 1)
    return tl.where(x < 1e-2, -x * (1.0 - x * (0.5 - x / 6.0)), tl.exp(-x) - 1.0)


@_autotuned(STRIP_CONFIGS, key=["D", "m_bucket", "w_bucket"], extra_heuristics={
    "EVEN_N": lambda a: (a["col1"] - a["col0"]) % a["BLOCK_N"] == 0})
@triton.jit(do_not_specialize=["M", "N", "col0", "col1", "offset", "m_bucket", "w_bucket"])
def _grad_strip_kernel(X, Y, A, B, TAU, ROW_LOSS, COL_LOSS, DIAG_ROW, DIAG_COL, H, HS, M, N, D,
                       col0, col1, offset, lam, h_scale, m_bucket, w_bucket, sxm, sxd, sym, syd, shm,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       TILES: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
                       EVEN_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    # Program (p, q): row block p, column tiles [q TILES, (q + 1) TILES) of the strip [col0, col1),
    # the loop over (column tile, k) flattened as in the forward. Per tile: recompute S, then the
    # gradient of N*L w.r.t. S, times h_scale, with the shifts above:
    #   P_ij = exp(S_ij - S_ii - lr_i),  Q_ij = exp(S_ij - S_jj - lc_j)   (exponents <= 0)
    #   H_ij = h_scale * (lam P_ij + (1-lam) Q_ij)  off the positives,
    #   H_ii = h_scale * (lam expm1(-lr_i) + (1-lam) expm1(-lc_i))  (P_ii - 1 without cancellation)
    # HS[program] = sum_ij (N G_ij) S_ij over its tiles (for dL/dtau = -(1/tau) sum_ij G_ij S_ij) as
    #   sum_ij lam P_ij (S_ij - S_ii) + (1-lam) Q_ij (S_ij - S_jj)  (rows of P, columns of Q sum to 1)
    # which needs neither the -1 of the positives nor any number of size 1/tau.
    rb = tl.program_id(0)
    rows = (rb * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M
    scale = LOG2E / tl.load(TAU).to(tl.float32)
    a = tl.load(A + rows, mask=row_ok, other=0.0) * scale
    lr = tl.load(ROW_LOSS + rows, mask=row_ok, other=0.0)
    d_row = tl.load(DIAG_ROW + rows, mask=row_ok, other=0.0) * LOG2E
    # H at row i's positive (column i + offset, when it lies in this strip): P_ii - 1 in both
    # directions, lam expm1(-lr_i) + (1 - lam) expm1(-lc_{i+offset}), without cancellation
    lc_pos = tl.load(COL_LOSS + rows + offset, mask=row_ok & (rows + offset < N), other=0.0)
    pos = lam * _expm1_neg(lr) + (1.0 - lam) * _expm1_neg(lc_pos)
    ct0 = tl.program_id(1) * TILES
    ct1 = tl.minimum(ct0 + TILES, tl.cdiv(col1 - col0, BLOCK_N))
    k_tiles = tl.cdiv(D, BLOCK_K)
    hs = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    ct = ct0 - 1
    ki = k_tiles - 1
    for _ in range(0, (ct1 - ct0) * k_tiles):
        ki = tl.where(ki == k_tiles - 1, 0, ki + 1)
        ct = tl.where(ki == 0, ct + 1, ct)
        local = ct * BLOCK_N + tl.arange(0, BLOCK_N)  # column within the strip (H's column)
        cols = (col0 + local).to(tl.int64)
        col_ok = cols < col1
        ks = ki * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = ks < D
        x = _load_tile(X, rows, ks, row_ok, k_ok, sxm, sxd, EVEN_M and EVEN_K)
        y = _load_tile(Y, ks, cols, k_ok, col_ok, syd, sym, EVEN_N and EVEN_K)
        if UPCAST:
            x = x.to(tl.float32)
            y = y.to(tl.float32)
        acc = tl.dot(x, y, acc, input_precision=PRECISION)
        if ki == k_tiles - 1:
            # t and u one after the other (fewer tile-sized values alive); positives patched last
            s = acc * a[:, None] * tl.load(B + cols, mask=col_ok, other=0.0)[None, :]
            t = s - d_row[:, None]
            p = lam * tl.exp2(t - (lr * LOG2E)[:, None])
            term = p * t
            u = s - (tl.load(DIAG_COL + cols, mask=col_ok, other=0.0) * LOG2E)[None, :]
            q = (1.0 - lam) * tl.exp2(u - (tl.load(COL_LOSS + cols, mask=col_ok, other=0.0) * LOG2E)[None, :])
            term += q * u
            h = p + q
            diag0 = rb * BLOCK_M + offset  # the column of this row block's first positive
            if (col0 + ct * BLOCK_N < diag0 + BLOCK_M) & (diag0 < col0 + ct * BLOCK_N + BLOCK_N):
                # a positive's terms are exactly 0 (its t and u are, up to rounding here), and
                # H_ii = P_ii - 1 comes from the row vector pos (no tile-sized expm1)
                is_pos = cols[None, :] == rows[:, None] + offset
                term = tl.where(is_pos, 0.0, term)
                h = tl.where(is_pos, pos[:, None], h)
            if not (EVEN_M and EVEN_N):
                term = tl.where(row_ok[:, None] & col_ok[None, :], term, 0.0)
            hs += tl.sum(term, 1)
            out = H + rows[:, None] * shm + local[None, :]
            h = (h * h_scale).to(H.dtype.element_ty)
            if EVEN_M and EVEN_N:
                tl.store(out, h)  # full tile: unmasked, vectorised
            else:
                tl.store(out, h, mask=row_ok[:, None] & col_ok[None, :])
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    tl.store(HS + rb * tl.num_programs(1) + tl.program_id(1), tl.sum(hs, 0) * LN2)


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


# ------------------------------------------------------------------------------------ host side
def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow torch's matmul setting (TF32 only where the user allowed it); ignored for 16-bit
    if INTERPRET or dtype != torch.float32 or torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _upcast(dtype: torch.dtype) -> bool:
    return INTERPRET and dtype != torch.float32


def _candidate_configs(kernel, named_args: dict) -> list:
    """The configs the autotuner may pick for these arguments (scratch is sized for all)."""
    if INTERPRET:
        return [INTERPRET_CONFIG]
    return _prune(kernel.configs, named_args)


def _launched_config(kernel):
    """The config of the kernel's latest launch (the autotuner's pick for that key)."""
    return kernel.best_config


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter: no columns split unless a test asks (FWD_WAVES)
    return torch.cuda.get_device_properties(device).multi_processor_count


def _fwd_layout(M: int, N: int, block_m: int, block_n: int, sm_count: int) -> tuple[int, int]:
    """(row programs, column splits) of the forward grid for one tile shape."""
    n_rb, n_cb = triton.cdiv(M, block_m), triton.cdiv(N, block_n)
    row_progs = min(n_rb, max(1, COL_SCRATCH_BYTES // (8 * N)))
    want = max(1, min(n_cb, triton.cdiv(FWD_WAVES * sm_count, row_progs)))
    return row_progs, triton.cdiv(n_cb, triton.cdiv(n_cb, want))  # no empty split


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


def lse(X, Y, tau, stats: PairStats, lam=None):
    """(lr, lc, loss): row losses (M,), column losses (N,) over these rows, and with lam (M == N)
    the 0-d loss (else None)."""
    M, D = X.shape
    N = Y.shape[0]
    sm = _sm_count(X.device)
    max_row_progs = max(1, COL_SCRATCH_BYTES // (8 * N))
    args = {"X": X, "M": M, "N": N, "n_bucket": size_bucket(N)}
    # scratch for the largest grid any candidate config launches (autotuning runs them all)
    layouts = [_fwd_layout(M, N, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], sm)
               for c in _candidate_configs(_lse_fwd_kernel, args)]
    row_parts = torch.empty((2, max(s for _, s in layouts), M), device=X.device, dtype=torch.float32)
    col_parts = torch.empty((2, max(p for p, _ in layouts), N), device=X.device, dtype=torch.float32)

    def grid(meta):
        return _fwd_layout(M, N, meta["BLOCK_M"], meta["BLOCK_N"], sm)

    _lse_fwd_kernel[grid](
        X, Y, stats.a, stats.b, tau, stats.d_row, row_parts[0], row_parts[1],
        col_parts[0], col_parts[1], M, N, D, stats.offset, max_row_progs, size_bucket(N),
        X.stride(0), X.stride(1), Y.stride(0), Y.stride(1),
        UPCAST=_upcast(X.dtype), PRECISION=_precision(X.dtype))
    cfg = _launched_config(_lse_fwd_kernel)
    n_parts, n_splits = _fwd_layout(M, N, cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], sm)
    lr = torch.empty(M, device=X.device, dtype=torch.float32)
    lc = torch.empty(N, device=X.device, dtype=torch.float32)
    block = min(MERGE_BLOCK, _pow2(max(M, N)))
    n_blocks = triton.cdiv(max(M, N), block)
    with_loss = lam is not None
    # one block writes the loss itself (a 0-d tensor): no extra reduction launch at small N
    part = torch.empty(() if n_blocks == 1 else n_blocks, device=X.device, dtype=torch.float32)
    _merge_kernel[(n_blocks,)](
        row_parts[0], row_parts[1], col_parts[0], col_parts[1], stats.d_col, M, N, n_splits, n_parts,
        lr, lc, part, float(lam) if with_loss else 0.0, 1.0 / N, WITH_LOSS=with_loss, BLOCK=block)
    if not with_loss:
        return lr, lc, None
    return lr, lc, (part if n_blocks == 1 else part.sum())


def strip_width(M: int, N: int, D: int, dtype: torch.dtype, device: torch.device) -> int:
    """Columns per backward strip, by bytes (module constants), a multiple of 256 below N."""
    elt = torch.finfo(dtype).bits // 8
    left = max(0, BACKWARD_BYTES - M * D * (4 + elt))  # beside W (fp32) and the normalised x
    width = min(STRIP_BYTES, left) // (max(M, 1) * elt)
    width = min(STRIP_COLS_MAX, max(256, width // 256 * 256))  # whole column tiles of every BLOCK_N (<= 128)
    return min(N, width)


def grad_strip(X, Y, tau, stats: PairStats, lam: float, c0: int, c1: int, h_scale: float):
    """(H, hs): H = h_scale * N * dL/dS[:, c0:c1] (M x (c1 - c0)) in the input dtype (for the
    tensor-core GEMMs) and hs, 1-D fp32 partial sums of sum_ij (N dL/dS_ij) S_ij over the strip."""
    M, D = X.shape
    N = Y.shape[0]
    width = c1 - c0
    H = torch.empty((M, width), device=X.device, dtype=X.dtype)

    def grid(meta):
        return triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(triton.cdiv(width, meta["BLOCK_N"]), STRIP_TILES)

    # one partial sum per program, for the largest grid any candidate config launches
    grids = [grid(c.kwargs) for c in _candidate_configs(_grad_strip_kernel, {"X": X, "M": M, "col0": c0, "col1": c1})]
    hs = torch.empty(max(p * q for p, q in grids), device=X.device, dtype=torch.float32)
    _grad_strip_kernel[grid](
        X, Y, stats.a, stats.b, tau, stats.lr, stats.lc, stats.d_row, stats.d_col, H, hs, M, N, D,
        c0, c1, stats.offset, float(lam), float(h_scale), size_bucket(M), size_bucket(width),
        X.stride(0), X.stride(1), Y.stride(0), Y.stride(1), H.stride(0),
        TILES=STRIP_TILES, UPCAST=_upcast(X.dtype), PRECISION=_precision(X.dtype))
    g = grid(_launched_config(_grad_strip_kernel).kwargs)
    return H, hs[: g[0] * g[1]]


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


def input_grad(G, X, a, grad, tau, coef: float, normalize: bool, out, *, hs=None, tau_coef=None, d_tau=None):
    """out = dL/dX from G (fp32, M x D, contiguous): see _input_grad_kernel; with hs, also d_tau."""
    M, D = X.shape
    block_m, block_d = _rows_config(D)
    with_tau = hs is not None
    _input_grad_kernel[(triton.cdiv(M, block_m),)](
        G, X, a, grad, tau, out, hs if with_tau else G, d_tau if with_tau else G, M, D,
        hs.numel() if with_tau else 0, float(coef), float(tau_coef or 0.0), X.stride(0), X.stride(1),
        NORMALIZE=normalize, WITH_TAU=with_tau, BLOCK_M=block_m, BLOCK_D=block_d)


# ------------------------------------------------------------------------------- introspection
AUTOTUNED = {"lse_fwd": _lse_fwd_kernel, "grad_strip": _grad_strip_kernel}
SHIPPED_CONFIGS = {"_lse_fwd_kernel": FWD_CONFIGS, "_grad_strip_kernel": STRIP_CONFIGS}  # 16-bit inputs


def shipped_configs(kernel_name: str, dtype: torch.dtype) -> list:
    """The autotune set a kernel draws from for inputs of this dtype (before size pruning)."""
    configs = SHIPPED_CONFIGS[kernel_name]
    if dtype == torch.float32:
        return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) == FP32_TILE]
    return configs


def config_str(cfg) -> str:
    kw = " ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    return f"{kw} warps={cfg.num_warps} stages={cfg.num_stages}"


def autotune_choices() -> dict[str, str]:
    """For each autotuned kernel and each key tuned so far in this process, the config picked:
    {"lse_fwd D=512 n_bucket=16384 bfloat16": "BLOCK_M=128 BLOCK_N=128 warps=8 stages=3", ...}.
    Empty under the interpreter (one config, nothing tuned)."""
    out = {}
    for name, kernel in AUTOTUNED.items():
        for key, cfg in kernel.cache.items():
            named = [f"{k}={v}" for k, v in zip(kernel.keys, key)]
            dtype = key[len(kernel.keys)] if len(key) > len(kernel.keys) else ""
            out[" ".join([name, *named, str(dtype).replace("torch.", "")])] = config_str(cfg)
    return out
