"""The fused ConVIRT loss against the plain reference: forward, backward, d tau, edge cases, memory.

On a CPU the Triton kernels run under TRITON_INTERPRET=1 (set by conftest.py before Triton loads); GPU
tests (@pytest.mark.gpu) check the compiled kernels with flash-attention's accuracy rule.
"""

import importlib.util
import math
import os

import pytest
import torch

from torch.utils._python_dispatch import TorchDispatchMode

from convirt_fast import ConVIRTLoss
from convirt_fast import convirt_loss
from convirt_fast.kernels import torch_loss
from convirt_fast.kernels.reference import convirt_loss_reference, open_clip_style

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None
needs_interpreter = pytest.mark.skipif(
    not INTERPRET, reason="Triton on CPU tensors needs Triton and TRITON_INTERPRET=1 (conftest.py sets it without CUDA)")
# "torch" takes its direct path at these sizes (N x N <= torch_loss.DIRECT_ELEMS); "torch_chunked"
# is the same backend with that threshold at 0, i.e. the chunked path large N takes
CPU_BACKENDS = [pytest.param("triton", marks=needs_interpreter), "torch", "torch_chunked"]


@pytest.fixture
def use_backend(monkeypatch):
    """backend name -> the convirt_loss backend argument, forcing the chunked torch path if asked."""
    def resolve(backend):
        if backend == "torch_chunked":
            monkeypatch.setattr(torch_loss, "DIRECT_ELEMS", 0)
            return "torch"
        return backend
    return resolve

# Max error relative to the largest reference value, against an fp64 reference on the same
# (already rounded) inputs: (loss relative to max(1, loss), gradients). Measured errors are
# 2-4x below these (bf16 gradients: 2x). 16-bit inputs: the backward multiplies the gradient strip
# and the normalised rows in the input dtype (as tensor cores do), fp32 elsewhere; the gradients
# come out rounded to the input dtype.
TOL = {
    torch.float32: (1e-6, 5e-6),
    # bf16: the gradients' own rounding is 2^-9 = 2e-3; the normalised rows and the gradient strip
    # rounded to bf16 for the GEMMs add up to 1.1e-2 (plain bf16 torch: 1e-2 to 0.8 on these cases)
    torch.bfloat16: (1e-6, 2e-2),
    torch.float16: (1e-6, 2e-3),
}
TAU_TOL = 1e-6  # d loss / d tau, relative to max(|d tau|, 1/tau^2), every dtype (see below)

# (N, D, dtype, tau, lam): odd N including 1, D in {1, 70, 512} and others, every dtype, tau and lam
# value at least twice, not the full product (the interpreter is slow).
CASES = [
    (1, 70, torch.float32, 0.1, 0.75),
    (1, 1, torch.bfloat16, 0.01, 0.0),
    (2, 1, torch.float16, 1.0, 1.0),
    (37, 70, torch.float32, 0.01, 0.75),
    (37, 70, torch.bfloat16, 0.1, 1.0),
    (37, 70, torch.float16, 1.0, 0.0),
    (65, 512, torch.float32, 1.0, 0.0),
    (65, 512, torch.bfloat16, 0.01, 0.75),
    (99, 512, torch.float16, 0.1, 0.75),
    (131, 33, torch.float16, 0.01, 1.0),
    (199, 1, torch.float32, 0.1, 0.75),
    (200, 100, torch.bfloat16, 1.0, 0.0),
]


def rel_err(x: torch.Tensor, ref: torch.Tensor, floor: float = 1e-30) -> float:
    """Max abs error over the largest reference magnitude (at least `floor`)."""
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(floor)).item()


def make_pair(n, d, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    img = (torch.randn(n, d, generator=g) * 3).to(device=device, dtype=dtype)
    txt = (0.1 * img.float() + torch.randn(n, d, generator=g).to(device)).to(dtype)  # cosines ~0.3
    return img, txt


def run(fn, img, txt, tau, lam, grad_out, **kw):
    """Loss value and gradients (img, txt, tau) for upstream gradient grad_out."""
    img = img.detach().clone().requires_grad_()
    txt = txt.detach().clone().requires_grad_()
    tau_t = torch.tensor(tau, dtype=torch.float64 if img.dtype == torch.float64 else torch.float32,
                         requires_grad=True)
    loss = fn(img, txt, tau_t, lam, **kw)
    (loss * grad_out).backward()
    return loss.detach(), img.grad, txt.grad, tau_t.grad


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n,d,dtype,tau,lam", CASES)
def test_matches_reference(use_backend, backend, n, d, dtype, tau, lam):
    img, txt = make_pair(n, d, dtype, seed=n * 1000 + d)
    grad_out = 1.7  # != 1: the backward must scale by it
    got = run(convirt_loss, img, txt, tau, lam, grad_out, backend=use_backend(backend))
    ref = run(convirt_loss_reference, img.double(), txt.double(), tau, lam, grad_out)
    loss_tol, grad_tol = TOL[dtype]
    assert got[0].dtype == torch.float32 and got[0].dim() == 0
    # the per-pair losses are computed directly (logits relative to their positive's), so the
    # loss keeps fp32 precision relative to itself even at tau = 0.01 (logits up to 100)
    assert abs(got[0].item() - ref[0].item()) <= loss_tol * max(1.0, abs(ref[0].item())), (got[0], ref[0])
    if n == 1:  # one pair: the loss is 0 whatever the inputs, and so are the gradients
        assert ref[0].abs().item() < 1e-12
    # d tau is summed in fp32 from fp32 logit tiles whatever the input dtype; its terms are of size
    # |S|/tau <= 1/tau^2, so that is the scale its rounding errors are relative to.
    assert rel_err(got[3], ref[3], floor=1 / tau**2) <= TAU_TOL, rel_err(got[3], ref[3], floor=1 / tau**2)
    for name, g, r in zip(("img", "txt"), got[1:3], ref[1:3]):
        assert g.dtype == dtype, name
        if n == 1 or d == 1:
            # one pair: zero gradients; D = 1: a normalised scalar is +-1 whatever its input, so
            # the inputs' gradients vanish (the kernel leaves fp32 rounding residue, ~1e-8)
            assert g.double().abs().max().item() <= 1e-5, (name, g.abs().max())
        else:
            assert rel_err(g, r) <= grad_tol, (name, rel_err(g, r))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tiny_tau_no_underflow(use_backend, backend):
    """tau = 0.01 with every cosine at -0.1: all logits are -10, so a fixed shift by 1/tau = 100
    computes exp(-110) = 0 in fp32 and a log of 0; an online log-sum-exp gets log(N) exactly."""
    n, d = 50, 128
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    alpha, beta = math.sqrt(0.9), math.sqrt(0.1)
    img = (alpha * q[:n] + beta * q[2 * n]).float()  # <img_i, txt_j> = -beta^2 = -0.1 for all i, j
    txt = (alpha * q[n:2 * n] - beta * q[2 * n]).float()
    logits = (img @ txt.t()) / 0.01
    naive = 1 / 0.01 + torch.log(torch.exp(logits - 1 / 0.01).sum(1))  # the fixed-shift trap
    assert not torch.isfinite(naive).any(), "the data must hit the underflow of a fixed shift"
    got = run(convirt_loss, img, txt, 0.01, 0.75, 1.0, backend=use_backend(backend))
    ref = run(convirt_loss_reference, img.double(), txt.double(), 0.01, 0.75, 1.0)
    assert abs(ref[0].item() - math.log(n)) < 1e-6  # all logits equal (up to fp32 rounding of q)
    assert abs(got[0].item() - ref[0].item()) < 1e-5
    for g, r in zip(got[1:3], ref[1:3]):
        assert torch.isfinite(g).all() and rel_err(g, r) < 1e-4
    assert rel_err(got[3], ref[3], floor=1 / 0.01**2) < TAU_TOL  # d tau is ~0 here: all logits equal


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_and_float_tau(use_backend, backend):
    base_img, base_txt = make_pair(70, 2 * 45, torch.float32, seed=3)
    img = base_img[:, ::2]  # strided columns
    txt = base_txt.t().contiguous().t()[:, 1::2]  # column-major, then strided
    assert not img.is_contiguous() and not txt.is_contiguous()
    img_g, txt_g = img.clone().requires_grad_(), txt.clone().requires_grad_()
    loss = convirt_loss(img_g, txt_g, 0.05, 0.3, backend=use_backend(backend))  # tau as a float
    loss.backward()
    ref = run(convirt_loss_reference, img.double(), txt.double(), 0.05, 0.3, 1.0)
    assert abs(loss.item() - ref[0].item()) < 1e-5
    assert rel_err(img_g.grad, ref[1]) < 2e-5 and rel_err(txt_g.grad, ref[2]) < 2e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_without_normalize(use_backend, backend):
    img, txt = make_pair(33, 20, torch.float32, seed=5)
    img, txt = img * 0.1, txt * 0.1  # raw dot products of moderate size
    got = run(convirt_loss, img, txt, 0.5, 0.75, 1.0, normalize=False, backend=use_backend(backend))
    ref = run(convirt_loss_reference, img.double(), txt.double(), 0.5, 0.75, 1.0, normalize=False)
    assert abs(got[0].item() - ref[0].item()) < 1e-5 * max(1, abs(ref[0].item()))
    for g, r in zip(got[1:], ref[1:]):
        assert rel_err(g, r) < 2e-5


@needs_interpreter
def test_triton_multi_program_rows_and_strips(monkeypatch):
    """Small budgets force the paths big N takes on a GPU: programs owning several row blocks
    (column partials merged in scratch), columns split between programs (row partials merged),
    a loss summed from several blocks' partials and a backward of many column strips."""
    from convirt_fast.kernels import triton_loss

    n, d = 150, 40
    monkeypatch.setattr(triton_loss, "COL_SCRATCH_BYTES", 8 * n * 2)  # 2 programs for 3 row blocks
    monkeypatch.setattr(triton_loss, "FWD_WAVES", 6)  # and 3 column splits (1 "SM" on a CPU)
    monkeypatch.setattr(triton_loss, "STRIP_COLS_MAX", 64)  # 3 strips, the last one partial
    monkeypatch.setattr(triton_loss, "MERGE_BLOCK", 64)  # 3 partial sums of the loss
    assert triton_loss._fwd_layout(n, n, 64, 64, 1) == (2, 3)
    img, txt = make_pair(n, d, torch.float32, seed=11)
    got = run(convirt_loss, img, txt, 0.02, 0.6, 0.5, backend="triton")
    ref = run(convirt_loss_reference, img.double(), txt.double(), 0.02, 0.6, 0.5)
    assert abs(got[0].item() - ref[0].item()) < 1e-5 * ref[0].abs().item()
    for g, r in zip(got[1:], ref[1:]):
        assert rel_err(g, r) < 2e-5


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_full_tiles(monkeypatch, dtype):
    """Sizes that are multiples of the tile take the unmasked loads and stores (EVEN_M/N/K), here
    with several row blocks per program, columns split, and tiles with and without positives."""
    from convirt_fast.kernels import triton_loss

    n, d = 192, 128  # 3 x 3 tiles of 64, 2 k steps
    monkeypatch.setattr(triton_loss, "COL_SCRATCH_BYTES", 8 * n * 2)
    monkeypatch.setattr(triton_loss, "FWD_WAVES", 4)
    monkeypatch.setattr(triton_loss, "STRIP_COLS_MAX", 128)  # a full strip, then a 64-column one
    img, txt = make_pair(n, d, dtype, seed=12)
    got = run(convirt_loss, img, txt, 0.01, 0.75, 1.3, backend="triton")
    ref = run(convirt_loss_reference, img.double(), txt.double(), 0.01, 0.75, 1.3)
    loss_tol, grad_tol = TOL[dtype]
    assert abs(got[0].item() - ref[0].item()) <= loss_tol * max(1.0, ref[0].abs().item())
    assert rel_err(got[3], ref[3], floor=1 / 0.01**2) <= TAU_TOL
    for g, r in zip(got[1:3], ref[1:3]):
        assert rel_err(g, r) <= grad_tol


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_replaces_open_clip_cliploss(use_backend, backend):
    """docs/loss.md's recipe: open_clip's ClipLoss (normalised features, logit_scale = 1/tau,
    mean of both directions) equals convirt_loss(tau=1/logit_scale, lam=0.5, normalize=False),
    value and gradients, the learnable logit_scale's included."""
    img, txt = make_pair(45, 32, torch.float32, seed=8)
    img = torch.nn.functional.normalize(img, dim=1).requires_grad_()
    txt = torch.nn.functional.normalize(txt, dim=1).requires_grad_()
    logit_scale = torch.tensor(1 / 0.07, requires_grad=True)

    def clip_loss(i, t, scale):  # open_clip.loss.ClipLoss.forward, world_size = 1 (no normalisation:
        labels = torch.arange(i.shape[0])  # reference.open_clip_style adds the model's F.normalize)
        return (torch.nn.functional.cross_entropy(scale * i @ t.t(), labels)
                + torch.nn.functional.cross_entropy(scale * t @ i.t(), labels)) / 2

    ref_args = [x.detach().double().requires_grad_() for x in (img, txt, logit_scale)]
    ref = clip_loss(*ref_args)
    ref.backward()
    loss = convirt_loss(img, txt, tau=1.0 / logit_scale, lam=0.5, normalize=False, backend=use_backend(backend))
    loss.backward()
    assert abs(loss.item() - ref.item()) < 1e-5
    for g, r in zip((img.grad, txt.grad, logit_scale.grad), (a.grad for a in ref_args)):
        assert rel_err(g, r) < 2e-5


def test_open_clip_style_baseline_is_the_convirt_loss():
    """The benchmarks' open_clip baseline (normalised features, logit_scale = 1/tau, directions
    weighted by lam) computes the same loss as the reference, two logits matrices instead of one."""
    img, txt = make_pair(17, 24, torch.float64, seed=10)
    for tau, lam in ((0.1, 0.75), (0.05, 0.5)):
        baseline, ref = open_clip_style(img, txt, tau, lam), convirt_loss_reference(img, txt, tau, lam)
        assert abs(baseline.item() - ref.item()) < 1e-12


def test_reference_gradcheck_float64():
    img, txt = make_pair(5, 4, torch.float64, seed=1)
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, t: convirt_loss_reference(a, b, t, 0.75),
        (img.requires_grad_(), txt.requires_grad_(), tau))


def test_learnable_tau_module():
    img, txt = make_pair(21, 16, torch.float32, seed=2)
    loss_fn = ConVIRTLoss(tau=0.07, lam=0.75, learnable_tau=True)
    loss = loss_fn(img, txt)
    loss.backward()
    log_tau = torch.tensor(math.log(0.07), dtype=torch.float64, requires_grad=True)
    ref = convirt_loss_reference(img.double(), txt.double(), log_tau.exp(), 0.75)
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-5
    assert loss_fn.log_tau.grad.abs().item() > 1e-3  # a real gradient, compared next
    assert abs(loss_fn.log_tau.grad.item() - log_tau.grad.item()) < 1e-4 * abs(log_tau.grad.item())
    # below min_tau the temperature is clamped (CLIP's logit_scale <= 100) and gets no gradient
    with torch.no_grad():
        loss_fn.log_tau.fill_(math.log(0.001))
    loss_fn.log_tau.grad = None
    assert abs(loss_fn.tau.item() - 0.01) < 1e-7
    loss_fn(img, txt).backward()
    assert loss_fn.log_tau.grad.item() == 0.0


def test_module_fixed_tau_and_errors():
    img, txt = make_pair(9, 8, torch.float32, seed=4)
    loss_fn = ConVIRTLoss(tau=0.2, lam=0.5)
    assert list(loss_fn.parameters()) == []
    ref = convirt_loss_reference(img.double(), txt.double(), 0.2, 0.5)
    assert abs(loss_fn(img, txt).item() - ref.item()) < 1e-5
    with pytest.raises(ValueError):
        ConVIRTLoss(lam=1.5)
    with pytest.raises(ValueError):
        ConVIRTLoss(backend="cuda")
    with pytest.raises(ValueError):
        convirt_loss(img, txt[:5])
    with pytest.raises(TypeError):
        convirt_loss(img, txt.double())
    with pytest.raises(ValueError):
        convirt_loss(img, txt, tau=0.0)


def test_custom_ops_opcheck_and_compile():
    """The raw ops pass torch.library's checks (schema, fake tensors, autograd registration), and
    torch.compile traces the public function whole (fullgraph) through them."""
    img, txt = make_pair(13, 24, torch.float32, seed=6)
    tau = torch.tensor(0.1)
    torch.library.opcheck(torch.ops.convirt_fast.loss_fwd.default, (img, txt, tau, 0.75, True, "torch"))
    loss, *stats = torch.ops.convirt_fast.loss_fwd(img, txt, tau, 0.75, True, "torch")
    torch.library.opcheck(torch.ops.convirt_fast.loss_bwd.default,
                          (torch.tensor(1.0), img, txt, tau, *stats, 0.75, True, "torch"))
    compiled = torch.compile(lambda x, y: convirt_loss(x, y, 0.1, 0.75, backend="torch"),
                             backend="aot_eager", fullgraph=True)
    x = img.clone().requires_grad_()
    out = compiled(x, txt)
    out.backward()
    ref = run(convirt_loss_reference, img.double(), txt.double(), 0.1, 0.75, 1.0)
    assert abs(out.item() - ref[0].item()) < 1e-5 and rel_err(x.grad, ref[1]) < 2e-5


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_torch_path_memory_is_bounded(monkeypatch):
    """No op of the torch path, forward or backward, makes a tensor near N x N: the largest is a
    chunk of CHUNK_ELEMS logits. The same probe flags the reference's N x N logits. (The probe
    cannot look inside a custom op, so it runs the ops' implementations directly.)"""
    from convirt_fast.kernels.convirt_loss import backward_impl, forward_impl

    n, d = 2048, 8
    monkeypatch.setattr(torch_loss, "CHUNK_ELEMS", 1 << 16)  # N x N / 64
    img, txt = make_pair(n, d, torch.float32, seed=7)
    tau = torch.tensor(0.1)
    with LargestTensor() as probe:
        loss, *stats = forward_impl(img, txt, tau, 0.75, True, "torch")
        d_img, d_txt, d_tau = backward_impl(torch.tensor(1.0), img, txt, tau, *stats, 0.75, True, "torch")
    ref = run(convirt_loss_reference, img.double(), txt.double(), 0.1, 0.75, 1.0)
    assert abs(loss.item() - ref[0].item()) < 1e-5 and rel_err(d_img, ref[1]) < 1e-4
    assert probe.largest <= max(1 << 16, n * d), probe.largest

    x, y = img.clone().requires_grad_(), txt.clone().requires_grad_()
    with LargestTensor() as probe:  # the probe sees an N x N matrix where there is one
        convirt_loss_reference(x, y, 0.1, 0.75).backward()
    assert probe.largest >= n * n


class OpCount(TorchDispatchMode):
    """Counts the aten ops run (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def test_torch_small_n_direct_path_fewer_ops_than_reference():
    """At the paper's N = 32 the torch backend computes the N x N logits directly: forward +
    backward in fewer torch ops than the plain reference (on a CPU each op's overhead is most of
    the time at this size), with the chunked path kept above torch_loss.DIRECT_ELEMS."""
    img, txt = make_pair(32, 512, torch.float32, seed=9)
    counts = {}
    for name, fn in (("ours", lambda x, y: convirt_loss(x, y, 0.1, 0.75, backend="torch")),
                     ("reference", lambda x, y: convirt_loss_reference(x, y, 0.1, 0.75))):
        x, y = img.clone().requires_grad_(), txt.clone().requires_grad_()
        with OpCount() as c:
            fn(x, y).backward()
        counts[name] = c.ops
    assert counts["ours"] < counts["reference"], counts
    assert torch_loss.use_direct(1024, 1024) and not torch_loss.use_direct(1025, 1025)


class _OnGpu(torch.Tensor):
    """A CPU tensor that says it is on CUDA: takes `_mm_f32`'s GPU branch (the probe) on a CPU."""

    @property
    def is_cuda(self):
        return True


@pytest.fixture
def mm_probe(monkeypatch, caplog):
    """convirt_loss's module with its probe cache cleared (before and after), torch.mm/addmm
    counted, and the probe's log lines: (module, calls, log_lines)."""
    module = importlib.import_module("convirt_fast.kernels.convirt_loss")  # the module, not the function
    calls = []
    for name in ("mm", "addmm"):
        real = getattr(torch, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls.append((_name, "out_dtype" in kwargs))
            return _real(*args, **kwargs)
        monkeypatch.setattr(torch, name, counted)
    module.out_dtype_mm_supported.cache_clear()
    caplog.set_level("INFO", logger=module.__name__)
    yield module, calls, lambda: [r.getMessage() for r in caplog.records if "out_dtype" in r.getMessage()]
    module.out_dtype_mm_supported.cache_clear()


def test_out_dtype_probe_failure_means_fallback_probed_and_logged_once(mm_probe):
    """Where torch.mm(out_dtype=float32) has no kernel (here: the CPU, as on an older torch), the
    first 16-bit `_mm_f32` on "CUDA" probes once, logs once, and every product takes the fallback
    (a bf16 product upcast to fp32), with no further probe or log line."""
    module, calls, logged = mm_probe
    a, b = (torch.randn(*shape).to(torch.bfloat16).as_subclass(_OnGpu) for shape in ((5, 16), (16, 7)))
    want = (a @ b).float().as_subclass(torch.Tensor)
    for _ in range(3):
        got = module._mm_f32(a, b)
        assert got.dtype == torch.float32 and torch.equal(got.as_subclass(torch.Tensor), want)
    assert calls == [("mm", True)]  # the probe's one attempt; the fallback uses `@`
    assert len(logged()) == 1 and "unavailable" in logged()[0]
    assert module.out_dtype_mm_supported(a.device) is False


def test_out_dtype_probe_success_survives_a_failing_product(mm_probe, monkeypatch):
    """Once the probe succeeded, a real product that fails raises (no try/except around it) and
    leaves the probe's answer as it was: the fp32-output path is not switched off, nor re-probed,
    nor logged again."""
    module, calls, logged = mm_probe
    fail = []

    def fake_mm(a, b, *, out_dtype=None, out=None):  # out_dtype works, unless `fail` says otherwise
        calls.append(("mm", out_dtype is not None))
        if fail:
            raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")
        prod = a.float() @ b.float()
        return prod if out is None else out.copy_(prod)

    def fake_addmm(c, a, b, *, out_dtype=None, out=None):
        calls.append(("addmm", out_dtype is not None))
        return out.add_(a.float() @ b.float()) if out is not None else c + a.float() @ b.float()
    monkeypatch.setattr(torch, "mm", fake_mm)
    monkeypatch.setattr(torch, "addmm", fake_addmm)
    a = torch.randn(5, 16).to(torch.bfloat16).as_subclass(_OnGpu)
    assert module._mm_f32(a, a.t()).dtype == torch.float32
    assert calls == [("mm", True), ("addmm", True), ("mm", True)]  # probe (mm, addmm), then the product
    fail.append(True)
    with pytest.raises(RuntimeError, match="CUBLAS"):
        module._mm_f32(a, a.t())
    assert module.out_dtype_mm_supported(a.device) is True
    assert calls[3:] == [("mm", True)]  # the failed product only: no second probe
    assert len(logged()) == 1 and "available on" in logged()[0] and "unavailable" not in logged()[0]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
def test_backends_implement_the_protocol():
    """triton_loss and torch_loss define every LossBackend function with the protocol's parameter
    names, in its order (keyword-only where it has them): what a type checker would check."""
    import inspect

    from convirt_fast.kernels import triton_loss
    from convirt_fast.kernels.backend import LossBackend

    names = [n for n, f in vars(LossBackend).items() if inspect.isfunction(f) and not n.startswith("_")]
    assert len(names) == 6
    for module in (triton_loss, torch_loss):
        for name in names:
            want = [(p.name, p.kind) for p in inspect.signature(getattr(LossBackend, name)).parameters.values()][1:]
            got = [(p.name, p.kind) for p in inspect.signature(getattr(module, name)).parameters.values()]
            assert got == want, (module.__name__, name)


def test_pair_stats_checks_shapes_and_offset():
    from convirt_fast.kernels.backend import PairStats

    m, n = torch.ones(3), torch.ones(8)
    assert PairStats(m, n, m, n, offset=5).offset == 5
    with pytest.raises(ValueError):
        PairStats(m, n, n, m)  # d_row and d_col swapped
    with pytest.raises(ValueError):
        PairStats(m, n, m, n, offset=6)  # rows 6..8 past the 8 columns


def test_auto_backend_on_cpu_is_torch():
    from convirt_fast.kernels.convirt_loss import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cuda", 0)) == "triton"


# ----------------------------------------------------------------------------------------- GPU
GPU_CASES = [(1, 512), (7, 70), (257, 512), (1000, 100), (4097, 512)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("n,d", GPU_CASES)
@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
def test_gpu_accuracy_rule(n, d, dtype, tau):
    """flash-attention's rule: the kernel's error against fp64 is at most 2x (gradients 3x) that of
    the same computation in plain torch at the input precision (the reference run in `dtype`)."""
    img, txt = make_pair(n, d, dtype, seed=n + d, device="cuda")
    got = run(convirt_loss, img, txt, tau, 0.75, 1.3, backend="triton")
    plain = run(convirt_loss_reference, img, txt, tau, 0.75, 1.3)
    exact = run(convirt_loss_reference, img.double(), txt.double(), tau, 0.75, 1.3)
    # floors at fp32 rounding, on the scales of the CPU tests (1/tau for the loss, 1/tau^2 for d tau)
    loss_floor = 1e-6 * max(1.0, 1.0 / tau, exact[0].abs().item())
    assert abs(got[0].item() - exact[0].item()) <= 2 * abs(plain[0].item() - exact[0].item()) + loss_floor
    assert rel_err(got[3], exact[3], 1 / tau**2) <= 3 * rel_err(plain[3], exact[3], 1 / tau**2) + TAU_TOL
    if n == 1:
        return
    for name, g, p, e in zip(("img", "txt"), got[1:3], plain[1:3], exact[1:3]):
        assert rel_err(g, e) <= 3 * rel_err(p, e) + 1e-5, (name, rel_err(g, e), rel_err(p, e))


@pytest.mark.gpu
def test_gpu_tiny_tau_no_underflow():
    """As test_tiny_tau_no_underflow at N = 4096: cosines about -0.1 +- 0.04 (a shared direction
    e pushes every pair apart), logits about -10, and exp(logit - 1/tau) underflows in fp32."""
    n, d = 4096, 512
    g = torch.Generator(device="cuda").manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(d, device="cuda", generator=g), dim=0)
    noise = lambda: torch.nn.functional.normalize(torch.randn(n, d, device="cuda", generator=g), dim=1)
    img = (math.sqrt(0.9) * noise() + math.sqrt(0.1) * e).to(torch.bfloat16)
    txt = (math.sqrt(0.9) * noise() - math.sqrt(0.1) * e).to(torch.bfloat16)
    logits = torch.nn.functional.normalize(img.float(), dim=1) @ torch.nn.functional.normalize(txt.float(), dim=1).t() / 0.01
    # the trap is hit: a fixed shift by 1/tau leaves most rows' sums below fp32's smallest normal
    # number, where precision is lost (CUDA keeps denormals, ~1e-41 here, instead of flushing to 0)
    fixed_shift_sums = torch.exp(logits - 100).sum(1)
    assert (fixed_shift_sums < torch.finfo(torch.float32).tiny).float().mean() > 0.5
    got = run(convirt_loss, img, txt, 0.01, 0.75, 1.0, backend="triton")
    exact = run(convirt_loss_reference, img.double(), txt.double(), 0.01, 0.75, 1.0)
    assert torch.isfinite(got[0]) and abs(got[0].item() - exact[0].item()) < 1e-4 * exact[0].abs().item()
    for g_, e_ in zip(got[1:], exact[1:]):
        assert torch.isfinite(g_).all() and rel_err(g_, e_) < 3e-2


@pytest.mark.gpu
def test_gpu_memory_no_n_by_n():
    """At N = 65,536 an N x N fp32 matrix is 16 GiB: peak memory beyond the inputs and their
    gradients stays within the kernels' documented scratch budget (module docstring: O(N * D)).

    One warm-up call first, as scripts/gpu_check.py's big stage does: in a fresh process this size
    bucket is not tuned yet, and autotuning inside the measured call would add Triton's do_bench
    L2-flush buffer (256 MiB) to the peak, which is no memory of the loss."""
    from convirt_fast.kernels import triton_loss

    n, d = 65536, 512
    img, txt = make_pair(n, d, torch.bfloat16, device="cuda")
    img.requires_grad_()
    txt.requires_grad_()
    convirt_loss(img, txt, 0.1, 0.75).backward()  # warm-up: compile and autotune, untracked
    img.grad = txt.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    convirt_loss(img, txt, 0.1, 0.75).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    grads = 2 * n * d * img.element_size()
    # scratch: the larger of the forward's column partials and the backward's W + x + strip H
    # budget; margin: O(N) statistics and one strip's y scaling and V product (< 16 MiB here).
    # 1,088 MiB in all: one N x N fp32 matrix (16 GiB) would exceed it 15 times over.
    budget = max(triton_loss.COL_SCRATCH_BYTES, triton_loss.BACKWARD_BYTES) + (64 << 20)
    assert extra <= grads + budget, (extra / 2**20, (grads + budget) / 2**20)


@pytest.mark.gpu
def test_gpu_torch_compile_inductor():
    img, txt = make_pair(300, 512, torch.bfloat16, device="cuda")
    compiled = torch.compile(lambda x, y: convirt_loss(x, y, 0.1, 0.75), fullgraph=True)
    got = run(lambda x, y, t, lam: compiled(x, y), img, txt, 0.1, 0.75, 1.0)
    eager = run(convirt_loss, img, txt, 0.1, 0.75, 1.0)
    assert abs(got[0].item() - eager[0].item()) < 1e-5
    assert rel_err(got[1], eager[1]) < 1e-3


def test_backward_holds_one_gradient_strip_at_a_time(monkeypatch):
    """The backward's memory is W + x + one strip H: a strip is freed before the next is made
    (two alive would take the peak at N = 262,144 from 0.875 to 1 GiB)."""
    import weakref

    strips, most_alive = [], [0]
    real = torch_loss.grad_strip

    def counted(*args, **kwargs):
        H, hs = real(*args, **kwargs)
        most_alive[0] = max(most_alive[0], 1 + sum(ref() is not None for ref in strips))
        strips.append(weakref.ref(H))
        return H, hs

    monkeypatch.setattr(torch_loss, "grad_strip", counted)
    monkeypatch.setattr(torch_loss, "DIRECT_ELEMS", 0)  # the chunked path, in strips
    monkeypatch.setattr(torch_loss, "_rows_per_chunk", lambda n_cols, device: 64)
    x, y = (torch.randn(300, 16, requires_grad=True) for _ in range(2))
    convirt_loss(x, y, backend="torch").backward()
    assert len(strips) == 5 and most_alive[0] == 1
