"""The ConVIRT loss over the global batch of all ranks (gather=True), exact and at 8 N^2 D in all.

Rank k holds M_k pairs (sizes may differ); the global batch is their concatenation, N = sum M_k, and
rank k's image rows are the rows [o_k, o_k + M_k) of the global N x N logits, o_k = sum_{j<k} M_j.
Each rank computes its own row block of S against the all-gathered text (M_k x N, rectangular):
  - the image->text losses lr_i of its image rows (complete locally);
  - column log-sum-exp partials over its rows, merged across ranks by two all-reduces of N floats
    (max, then rescaled sum-exp): the global text->image losses lc_j for every j;
  - the global loss (1/N)[lam sum lr + (1-lam) sum lc], one scalar all-reduce: every rank
    returns the same value, the loss of one process on the concatenated batch.
Backward: with all lc_j known, the rank's row block of G = dL/dS gives dL/d(its image rows) whole,
and every column's share of dL/d(text); those are summed over ranks and scattered to their owners
(reduce-scatter; all-reduce + slice on gloo, which lacks reduce-scatter). So rank k receives
exactly dL/d(its inputs) of the global loss L, and its share of dL/dtau.

Scaling convention: DDP and FSDP AVERAGE gradients over the R ranks, while the global gradient of
a parameter is the SUM over ranks of dL/d(rank's inputs) * d(inputs)/d(parameter). So the gradients
this function returns are R times the above (dtau too: its shares sum to dL/dtau); after the
averaging, every parameter gets exactly the single-process gradient of the global loss. The value
returned is the global loss itself (not R times it). Without DDP/FSDP averaging (a plain
all-reduce SUM of gradients), divide the returned gradients by R.

FLOPs per rank: 2 M_k N D forward, 6 M_k N D backward: 8 N^2 D over all ranks, as one process.
Communication: the text embeddings all-gathered (N x D), N-float all-reduces, one scalar; in the
backward one N x D fp32 reduce-scatter. (open_clip's gather_with_grad gathers and reduces both
modalities, and spends 12 N^2 D: two M_k x N logits matrices per rank, each with two
backward GEMMs.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .backend import PairStats
from .convirt_loss import (backend_module, check_inputs, convirt_loss, h_scale_for, resolve_backend,
                           rows_backward, tau_tensor)


def _sizes(m: int, device, group) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor([m], dtype=torch.int64, device=device), group=group)
    return [int(s) for s in sizes]


def _all_gather_rows(t: Tensor, sizes: list[int], group) -> Tensor:
    """Concatenation of every rank's t (rows may differ in number): padded to the largest."""
    pad = max(sizes)
    local = t.new_zeros((pad, *t.shape[1:]))
    local[: t.shape[0]] = t
    parts = [torch.empty_like(local) for _ in sizes]
    dist.all_gather(parts, local, group=group)
    return torch.cat([p[:m] for p, m in zip(parts, sizes)])


def _reduce_scatter_rows(t: Tensor, sizes: list[int], rank: int, group) -> Tensor:
    """Sum of t (N x ...) over ranks, this rank's rows only."""
    offset = sum(sizes[:rank])
    if dist.get_backend(group) == dist.Backend.NCCL:
        pad = max(sizes)
        padded = t.new_zeros((len(sizes) * pad, *t.shape[1:]))
        for k, m in enumerate(sizes):
            padded[k * pad: k * pad + m] = t[sum(sizes[:k]): sum(sizes[:k]) + m]
        out = t.new_empty((pad, *t.shape[1:]))
        dist.reduce_scatter_tensor(out, padded, group=group)
        return out[: sizes[rank]]
    dist.all_reduce(t, group=group)
    return t[offset: offset + sizes[rank]]


def _lse_all_reduce(c: Tensor, group) -> Tensor:
    """log sum_k exp(c_k) over ranks, elementwise: shift by the max so every term is <= 1."""
    m = c.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    s = torch.exp(c - m)
    dist.all_reduce(s, group=group)
    return m + torch.log(s)


class GatheredConVIRTLossFunction(torch.autograd.Function):
    """Global-batch loss; gradients R x dL/d(local inputs) for DDP/FSDP averaging (module doc)."""

    @staticmethod
    def forward(ctx, img, txt, tau, lam, normalize, backend, group):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        sizes = _sizes(img.shape[0], img.device, group)
        if min(sizes) < 1:
            raise ValueError(f"gather=True needs at least one pair on every rank; sizes {sizes}")
        n, offset, m = sum(sizes), sum(sizes[:rank]), img.shape[0]
        be = backend_module(backend)
        a, b_local, diag = be.prologue(img, txt, tau, normalize)
        txt_all = _all_gather_rows(txt, sizes, group)
        b_all = _all_gather_rows(b_local, sizes, group)
        diag_all = _all_gather_rows(diag, sizes, group)  # S_jj of every column: its shift
        lr, lc_local, _ = be.lse(img, txt_all, tau, PairStats(a, b_all, diag, diag_all, offset))
        lc = _lse_all_reduce(lc_local, group)
        total = lam * lr.sum() + (1.0 - lam) * lc[offset: offset + m].sum()
        dist.all_reduce(total, group=group)
        ctx.save_for_backward(img, txt, txt_all, tau, a, b_local, b_all, lr, lc, diag, diag_all)
        ctx.args = (lam, normalize, be, group, sizes, rank, world, offset, n)
        return total / n

    @staticmethod
    def backward(ctx, grad):
        img, txt, txt_all, tau, a, b_local, b_all, lr, lc, diag, diag_all = ctx.saved_tensors
        lam, normalize, be, group, sizes, rank, world, offset, n = ctx.args
        coef = world / (n * h_scale_for(n))  # R x dL/dx, for DDP's averaging
        v_all = torch.empty((n, txt.shape[1]), device=txt.device, dtype=torch.float32)

        def col_sink(c0, c1, v):
            v_all[c0:c1] = v

        stats = PairStats(a, b_all, diag, diag_all, offset, lr=lr, lc=lc)
        W, hs = rows_backward(be, img, txt_all, tau, stats, lam, n, normalize, col_sink)
        v = _reduce_scatter_rows(v_all, sizes, rank, group)
        d_img = torch.empty_like(img, memory_format=torch.contiguous_format)
        d_tau = torch.empty((), device=img.device, dtype=torch.float32)  # this rank's rows' share, x R
        be.input_grad(W, img, a, grad, tau, coef, normalize, d_img, hs=hs, tau_coef=world / n, d_tau=d_tau)
        d_txt = torch.empty_like(txt, memory_format=torch.contiguous_format)
        be.input_grad(v, txt, b_local, grad, tau, coef, normalize, d_txt)
        d_tau = d_tau.to(tau.dtype).reshape(tau.shape) if ctx.needs_input_grad[2] else None
        return d_img, d_txt, d_tau, None, None, None, None


def convirt_loss_gathered(img: Tensor, txt: Tensor, tau: float | Tensor = 0.1, lam: float = 0.75, *,
                          normalize: bool = True, backend: str = "auto", group=None) -> Tensor:
    """The ConVIRT loss of the global batch (all ranks of `group`, default: the default group).

    img, txt: this rank's (M_k, D) pairs (M_k may differ between ranks). Returns the global loss
    (same value on every rank); its gradients are scaled for DDP/FSDP gradient averaging (module
    docstring). Without an initialised process group, or with one rank, this is `convirt_loss`.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return convirt_loss(img, txt, tau, lam, normalize=normalize, backend=backend)
    check_inputs(img, txt, lam, min_rows=0)  # an empty rank is refused on every rank, after the sizes
    backend = resolve_backend(backend, img.device)
    return GatheredConVIRTLossFunction.apply(
        img, txt, tau_tensor(tau, img.device), float(lam), normalize, backend, group)
