"""Fused ConVIRT contrastive loss: forward, backward, and the learnable temperature's gradient.

Math. Image rows X (M, D) are the rows [offset, offset + M) of the global N x N problem, text rows
Y (N, D) all of it (single process: M = N, offset = 0). With a_i = 1/max(||X_i||, eps) and b_j
likewise (1 when normalize=False), x_i = a_i X_i, y_j = b_j Y_j:
  S_ij = <x_i, y_j> / tau
  lr_i = log sum_j exp(S_ij - S_ii) = l_i(v->u),  lc_j = log sum_i exp(S_ij - S_jj) = l_j(u->v)
  L = (1/N) sum_i [lam lr_i + (1 - lam) lc_i]
  P_ij = exp(S_ij - S_ii - lr_i) (rows sum to 1),  Q_ij = exp(S_ij - S_jj - lc_j) (columns do)
  G_ij = dL/dS_ij = (1/N) [lam P_ij + (1 - lam) Q_ij - [j == offset + i]]
  W_i = sum_j G_ij y_j,  V_j = sum_i G_ij x_i:  dL/dx_i = W_i / tau,  dL/dy_j = V_j / tau
  dL/dtau = -(1/tau) sum_ij G_ij S_ij
          = -(1/(N tau)) sum_ij [lam P_ij (S_ij - S_ii) + (1 - lam) Q_ij (S_ij - S_jj)]
  dL/dX_i = a_i (g_i - x_i <x_i, g_i>) with g_i = dL/dx_i (normalisation backward; same for Y)
Shifting every logit by its positive's (exactly 0 for the positive itself) keeps the statistics
and G accurate in fp32 at tau = 0.01: no difference of two numbers of size 1/tau is ever formed,
so a well-separated pair's tiny loss and gradient keep their relative precision.

FLOPs for forward + backward, N x N, dimension D (GEMM work; everything else is O(N^2) or O(N*D)):
  forward   2 N^2 D   one pass over S tiles (triton_loss._lse_fwd_kernel): row LSE online, column
                      LSE from per-program partials, so one pass serves both directions.
  backward  6 N^2 D   per column strip [c0, c1): recompute S and write H = N h dL/dS (2 N w D,
                      triton_loss._grad_strip_kernel), then W += H @ y[c0:c1] and
                      V[c0:c1] = H^T @ x (2 N w D each, cuBLAS with fp32 output).
  total     8 N^2 D   the minimum: one GEMM forward, one recompute + two gradient GEMMs backward.
The forward does not compute the gradients (as Liger's losses do): G needs every lc_j, which is only
known after the whole pass, so that would take a second pass in the forward (same 8 N^2 D) and make
forward-only evaluation (validation loss) 4x dearer.

The rest is O(N^2) exponentials (2 per logit forward, 2 backward) and O(N D) prologue/epilogue
kernels (norms, diagonal, normalisation backward, d tau).

Memory beyond inputs and gradients: O(N) statistics; forward column partials (<= 256 MiB,
triton_loss.COL_SCRATCH_BYTES); backward: the strip H (N x <= 8,192 columns, <= 256 MiB, and
within triton_loss.BACKWARD_BYTES with W and x), W in fp32 (N x D) and the normalised x in the input
dtype (N x D). No N x N matrix: at N = 262,144, D = 512, bf16: 0.25 GiB of scratch in the forward,
0.875 GiB in the backward (W 512 MiB, x 256, H 128). The torch backend's direct path below
torch_loss.DIRECT_ELEMS logits (N <= 1,024) holds a few N x N fp32 matrices of at most 4 MiB.

Launches (Triton, bf16, N <= 1,024, tau a float), 12 for `convirt_loss(...).backward()`:
  forward   4: the fill of the float tau into a 0-d tensor (tau_tensor), then 3 kernels: prologue,
            LSE pass, merge of the partials + loss (above N = 1,024, triton_loss.MERGE_BLOCK, the
            merge writes one loss partial per block and a torch sum of them adds a launch).
  backward  7 while one strip covers N (N <= 8,192 in bf16): row scaling x2 (x, then y of the
            strip), gradient strip, two cuBLAS GEMMs (W, V), two epilogues (d txt; d img with d tau);
            each further strip adds 5 (its y scaling, strip, two GEMMs, d txt epilogue), and
            several strips a torch.cat of their d tau partial sums.
  autograd  1: loss.backward() fills the output gradient (ones_like) before calling the backward.

Layers (flash-attention style): backend host functions (triton_loss / torch_loss, both
`backend.LossBackend`, statistics passed as one `backend.PairStats`) -> raw ops
`torch.ops.convirt_fast.loss_fwd/loss_bwd` (custom_op + fake, so torch.compile treats them as
opaque) -> `ConVIRTLossFunction` -> `convirt_loss`, the public function.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from typing import Callable, TypeVar

import torch
from torch import Tensor

from . import torch_loss
from .backend import LossBackend, PairStats

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "torch")
# Device types where backend="auto" runs the Triton kernels (a module constant so that the tests
# can exercise the fallback below on a CPU).
TRITON_DEVICE_TYPES = ("cuda",)
T = TypeVar("T")


def backend_module(name: str) -> LossBackend:
    if name == "torch":
        return torch_loss
    if name == "triton":
        from . import triton_loss  # imported late: a CPU-only install may have no Triton

        return triton_loss
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


# backend="auto" on a device where the Triton kernels cannot compile or launch (an older GPU, too
# little shared memory for the tiles, no Triton installed) runs the torch path instead, with one
# warning naming the reason. Only these failures fall back: Triton's own errors (compilation,
# ptxas, out of resources, autotuning: all raised before a kernel runs) and the driver's refusal to
# load or launch one ("Triton Error [CUDA]: ..."), except errors that mean memory ran out or the
# context is broken (STICKY_LAUNCH_ERRORS: the torch path could not run either, and the real error
# must surface). backend="triton" raises all of them.
STICKY_LAUNCH_ERRORS = ("out of memory", "illegal", "misaligned", "unspecified launch failure",
                        "device-side assert", "ecc error", "hardware stack error")
_fallen_back: dict[str, str] = {}  # device -> reason: torch serves backend="auto" there from now on


def kernel_failure(error: BaseException) -> bool:
    """Whether `error` says the Triton kernels cannot compile or launch here (module comment)."""
    if isinstance(error, ModuleNotFoundError):
        return (error.name or "").split(".")[0] == "triton"
    try:
        from triton.errors import TritonError
    except ImportError:
        TritonError = ()  # noqa: N806 - no Triton: only the ImportError above can come from it
    if TritonError and isinstance(error, TritonError):
        return True
    if type(error) is RuntimeError:  # not torch.OutOfMemoryError or other subclasses
        text = str(error)
        return text.startswith("Triton Error [") and not any(s in text.lower() for s in STICKY_LAUNCH_ERRORS)
    return False


def fell_back(device: torch.device) -> str | None:
    """The reason backend="auto" runs torch on `device`, or None while Triton serves it."""
    return _fallen_back.get(str(device))


def run_with_fallback(device: torch.device, run: Callable[[str], T]) -> T:
    """run("triton"), or run("torch") when the kernels cannot run on `device` (kernel_failure):
    warned once per device, remembered, and torch runs this call and every later one there."""
    if fell_back(device) is None:
        try:
            return run("triton")
        except Exception as error:  # narrowed by kernel_failure; anything else is raised unchanged
            if not kernel_failure(error):
                raise
            reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            _fallen_back[str(device)] = reason
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
            warnings.warn(f"convirt_loss: the Triton kernels cannot run on {device} ({name}): {reason}. "
                          f"backend='auto' uses the plain-torch path on this device from now on (slower; "
                          f"backend='triton' raises this error instead)", RuntimeWarning, stacklevel=2)
    return run("torch")


def h_scale_for(n_total: int) -> float:
    """H stores N*dL/dS in [-1, 1] times 2^k <= 2^14: fp16's normal range holds the softmax
    probabilities ~1/N of large batches (2^-14 > 1/N underflows to subnormals otherwise), and
    2^14 * 1 stays below fp16's maximum 65504."""
    return float(2 ** min(14, int(math.log2(max(n_total, 1)))))


@functools.lru_cache(maxsize=None)
def out_dtype_mm_supported(device: torch.device) -> bool:
    """Whether torch.mm/addmm(..., out_dtype=torch.float32) multiply bf16 with an fp32 result on
    this device (recent torch, CUDA). Probed once per device on a 16 x 16 product and logged once:
    only that probe's failure switches the fp32-output path off, never a failure of a real call."""
    a = torch.zeros((16, 16), device=device, dtype=torch.bfloat16)
    try:
        torch.mm(a, a, out_dtype=torch.float32)
        torch.addmm(torch.zeros((16, 16), device=device), a, a, out_dtype=torch.float32)
    except (TypeError, NotImplementedError, RuntimeError) as e:  # no such argument / no kernel here
        log.info("torch.mm(out_dtype=float32) unavailable on %s (%s: %s): 16-bit backward GEMMs "
                 "round their product to bf16 (fp16: multiply in fp32)", device, type(e).__name__, e)
        return False
    log.info("torch.mm(out_dtype=float32) available on %s: 16-bit backward GEMMs accumulate into fp32", device)
    return True


def _mm_f32(a: Tensor, b: Tensor, out: Tensor | None = None, accumulate: bool = False) -> Tensor:
    """a @ b with an fp32 result (into `out`, += when accumulate): 16-bit operands multiply in
    their dtype with fp32 output on a GPU (cuBLAS), in fp32 on a CPU."""
    if a.dtype != torch.float32 and a.is_cuda:
        if out_dtype_mm_supported(a.device):
            if accumulate:
                return torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
            return torch.mm(a, b, out_dtype=torch.float32, out=out) if out is not None else \
                torch.mm(a, b, out_dtype=torch.float32)
        # older torch: a bf16 product, then upcast; fp16 products could overflow (a row of Q may
        # sum to N), so those multiply in fp32
        prod = (a @ b).float() if a.dtype == torch.bfloat16 else a.float() @ b.float()
        return out.add_(prod) if accumulate else (out.copy_(prod) if out is not None else prod)
    a, b = a.float(), b.float()
    if accumulate:
        return torch.addmm(out, a, b, out=out)
    return torch.mm(a, b, out=out) if out is not None else a @ b


def rows_backward(be: LossBackend, X: Tensor, Y: Tensor, tau: Tensor, stats: PairStats, lam: float,
                  n_total: int, normalize: bool, col_sink) -> tuple[Tensor, Tensor]:
    """(W', hs): W' = N h W (M x D, fp32) and hs, partial sums (1-D fp32) of N sum_ij G_ij S_ij
    over these rows; col_sink(c0, c1, V') gets V' = N h V[c0:c1] strip by strip."""
    M, D = X.shape
    N = Y.shape[0]
    h_scale = h_scale_for(n_total)
    xn = be.scale_rows(X, stats.a) if normalize else X
    W = torch.empty((M, D), device=X.device, dtype=torch.float32)
    hs = []
    width = be.strip_width(M, N, D, X.dtype, X.device)
    for c0 in range(0, N, width):
        c1 = min(N, c0 + width)
        H, strip_hs = be.grad_strip(X, Y, tau, stats, lam, c0, c1, h_scale)
        hs.append(strip_hs)
        yc = be.scale_rows(Y[c0:c1], stats.b[c0:c1]) if normalize else Y[c0:c1]
        _mm_f32(H, yc.to(H.dtype), out=W, accumulate=c0 > 0)
        col_sink(c0, c1, _mm_f32(H.t(), xn.to(H.dtype)))
        # Freed before the next strip is allocated: otherwise two strips are alive at once (the
        # backward's peak would be W + x + 2 H, 1 GiB at N = 262,144). Stream order makes the reuse
        # safe while this strip's GEMMs are still queued.
        del H, yc
    return W, (hs[0] if len(hs) == 1 else torch.cat(hs))


def _direct(backend: str, n: int) -> bool:
    return backend == "torch" and torch_loss.use_direct(n, n)


def forward_impl(img: Tensor, txt: Tensor, tau: Tensor, lam: float, normalize: bool, backend: str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, a, b, lr, lc, diag): the loss and the O(N) statistics the backward needs."""
    if backend == "auto":  # Triton, or torch where the kernels cannot run (run_with_fallback)
        return run_with_fallback(img.device, lambda be: forward_impl(img, txt, tau, lam, normalize, be))
    if _direct(backend, img.shape[0]):
        return torch_loss.direct_forward(img, txt, tau, lam, normalize)
    be = backend_module(backend)
    a, b, diag = be.prologue(img, txt, tau, normalize)
    lr, lc, loss = be.lse(img, txt, tau, PairStats(a, b, diag, diag), lam=lam)
    return loss, a, b, lr, lc, diag


loss_fwd = torch.library.custom_op("convirt_fast::loss_fwd", forward_impl, mutates_args=())


@loss_fwd.register_fake
def _(img, txt, tau, lam, normalize, backend):
    n = img.shape[0]
    stat = img.new_empty(n, dtype=torch.float32)
    return (img.new_empty((), dtype=torch.float32), stat, *(torch.empty_like(stat) for _ in range(4)))


def backward_impl(grad: Tensor, img: Tensor, txt: Tensor, tau: Tensor, a: Tensor, b: Tensor,
                  lr: Tensor, lc: Tensor, diag: Tensor, lam: float, normalize: bool, backend: str
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """(d img, d txt, d tau) for upstream gradient `grad` (0-d). The statistics of either backend
    serve the other (the same definitions), so a backward may fall back after a Triton forward."""
    if backend == "auto":
        return run_with_fallback(img.device, lambda be: backward_impl(grad, img, txt, tau, a, b, lr, lc, diag, lam,
                                                                      normalize, be))
    n = img.shape[0]
    if _direct(backend, n):
        return torch_loss.direct_backward(grad, img, txt, tau, lr, lc, lam, normalize)
    be = backend_module(backend)
    stats = PairStats(a, b, diag, diag, lr=lr, lc=lc)
    coef = 1.0 / (n * h_scale_for(n))  # grad * dL/dx = grad * coef / tau * W'  (W' = N h W)
    d_txt = torch.empty_like(txt, memory_format=torch.contiguous_format)

    def col_sink(c0, c1, v):
        be.input_grad(v, txt[c0:c1], b[c0:c1], grad, tau, coef, normalize, d_txt[c0:c1])

    W, hs = rows_backward(be, img, txt, tau, stats, lam, n, normalize, col_sink)
    d_img = torch.empty_like(img, memory_format=torch.contiguous_format)
    d_tau = torch.empty((), device=img.device, dtype=torch.float32)
    # dL/dtau = -(1/tau) sum_ij G_ij S_ij = -(1/(N tau)) sum(hs)
    be.input_grad(W, img, a, grad, tau, coef, normalize, d_img, hs=hs, tau_coef=1.0 / n, d_tau=d_tau)
    return d_img, d_txt, d_tau


loss_bwd = torch.library.custom_op("convirt_fast::loss_bwd", backward_impl, mutates_args=())


@loss_bwd.register_fake
def _(grad, img, txt, tau, a, b, lr, lc, diag, lam, normalize, backend):
    return (torch.empty_like(img, memory_format=torch.contiguous_format),
            torch.empty_like(txt, memory_format=torch.contiguous_format),
            img.new_empty((), dtype=torch.float32))


class ConVIRTLossFunction(torch.autograd.Function):
    """Forward: the loss from one pass (O(N) statistics saved). Backward: recomputes the
    logits strip by strip; gradients for img, txt and, when it is a tensor that needs it, tau."""

    @staticmethod
    def forward(ctx, img, txt, tau, lam, normalize, backend):
        # the custom ops exist for torch.compile; eager mode skips their Python dispatch (~tens of
        # microseconds a call, which matters at the paper's N = 32)
        fwd = torch.ops.convirt_fast.loss_fwd if torch.compiler.is_compiling() else forward_impl
        loss, *stats = fwd(img, txt, tau, lam, normalize, backend)
        ctx.save_for_backward(img, txt, tau, *stats)
        ctx.args = (lam, normalize, backend)
        return loss

    @staticmethod
    def backward(ctx, grad):
        img, txt, tau, *stats = ctx.saved_tensors
        bwd = torch.ops.convirt_fast.loss_bwd if torch.compiler.is_compiling() else backward_impl
        d_img, d_txt, d_tau = bwd(grad, img, txt, tau, *stats, *ctx.args)
        d_tau = d_tau.to(tau.dtype).reshape(tau.shape) if ctx.needs_input_grad[2] else None
        return d_img, d_txt, d_tau, None, None, None


def resolve_backend(backend: str, device: torch.device) -> str:
    """"auto": Triton on CUDA at every N, torch elsewhere. At small N on a GPU the cost is launches,
    and the fused path launches fewer (4 forward, 12 forward + backward with autograd's fill of the
    output gradient: module docstring) than any torch computation of the loss (the reference: 17
    and 58 at N = 32, autograd's fill included), so there is no size below which
    torch would be faster (docs/loss.md, "Backends and tiles"). Where the kernels failed to compile or launch,
    "auto" is torch from then on (run_with_fallback)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type in TRITON_DEVICE_TYPES and fell_back(device) is None else "torch"
    return backend


def check_inputs(img: Tensor, txt: Tensor, lam: float, min_rows: int = 1) -> None:
    if img.dim() != 2 or img.shape != txt.shape:
        raise ValueError(f"img and txt must both be (N, D); got {tuple(img.shape)} and {tuple(txt.shape)}")
    if img.shape[0] < min_rows or img.shape[1] < 1:
        raise ValueError(f"need N >= 1 pairs and D >= 1; got {tuple(img.shape)}")
    if img.dtype not in (torch.float32, torch.bfloat16, torch.float16) or txt.dtype != img.dtype:
        raise TypeError(f"img and txt must share one dtype of fp32/bf16/fp16; got {img.dtype}, {txt.dtype}")
    if img.device != txt.device:
        raise ValueError(f"img and txt are on different devices: {img.device}, {txt.device}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1]; got {lam}")


def check_tau_value(tau: float | Tensor, where: str = "tau") -> None:
    """Refuse a temperature that is not a finite number > 0 (it divides every logit). A tensor's
    value is read on the host (on a GPU, a sync: convirt_loss's check_tau)."""
    if isinstance(tau, Tensor):
        if tau.numel() != 1:
            raise ValueError(f"{where} must be a float or a 1-element tensor; got shape {tuple(tau.shape)}")
        if not tau.dtype.is_floating_point:
            raise TypeError(f"{where} must be a floating-point tensor; got {tau.dtype}")
        value = float(tau.detach().reshape(()).item())
    else:
        value = float(tau)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{where} must be a finite number > 0 (the temperature divides every logit); got {value}")


def tau_tensor(tau: float | Tensor, device: torch.device) -> Tensor:
    """tau as a tensor on `device`; a float is checked here, a tensor's value by convirt_loss
    (check_tau: reading it is a host read, which the trainer's step must not do)."""
    if isinstance(tau, Tensor):
        if tau.numel() != 1:
            raise ValueError(f"tau must be a float or a 1-element tensor; got shape {tuple(tau.shape)}")
        return tau.to(device)
    check_tau_value(tau)
    return torch.full((), float(tau), device=device, dtype=torch.float32)


def convirt_loss(img: Tensor, txt: Tensor, tau: float | Tensor = 0.1, lam: float = 0.75, *,
                 normalize: bool = True, backend: str = "auto", check_tau: bool = True) -> Tensor:
    """ConVIRT loss L = (1/N) sum_i [lam l_i(v->u) + (1 - lam) l_i(u->v)] (PAPER.md, "Loss").

    img, txt: (N, D) image and text projections, fp32, bf16 or fp16 (one dtype), any strides; row i
        of one is paired with row i of the other, all other rows are negatives.
    tau: temperature > 0, a float or a 0-d tensor (a learnable temperature receives d loss / d tau).
    lam: weight of the image->text direction l(v->u); 1 - lam weighs text->image.
    normalize: L2-normalise the rows first (cosine similarities); False uses raw dot products.
    backend: "auto" (Triton on CUDA tensors, torch otherwise; torch also where the kernels cannot
        compile or launch, with one warning naming why), "triton" (such failures raise; on a CPU it
        needs TRITON_INTERPRET=1), "torch" (plain torch: direct below N x N = torch_loss.DIRECT_ELEMS,
        chunked above, memory O(N * chunk) in both passes).
    check_tau: refuse a tensor tau <= 0 (a float always is). Reading the value is a host read, on a
        GPU a sync per call: pass False when yours is positive by construction, as ConVIRTLoss's
        learnable exp(log_tau) is (never checked under torch.compile).
    Returns a 0-d fp32 tensor. No N x N matrix is ever stored (module docstring: FLOPs, memory).
    """
    check_inputs(img, txt, lam)
    if check_tau and isinstance(tau, Tensor) and not torch.compiler.is_compiling():
        check_tau_value(tau)
    resolved = resolve_backend(backend, img.device)
    tau_t = tau_tensor(tau, img.device)
    if _direct(resolved, img.shape[0]) and not torch.compiler.is_compiling():
        return torch_loss.direct_loss(img, txt, tau_t, float(lam), normalize)
    # "auto" reaches the ops as such while it means Triton: they fall back if the kernels cannot run
    op_backend = "auto" if backend == "auto" and resolved == "triton" else resolved
    return ConVIRTLossFunction.apply(img, txt, tau_t, float(lam), normalize, op_backend)
