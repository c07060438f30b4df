"""The ConVIRT loss: fused Triton kernel vs the plain reference, the chunked torch path and an
open_clip-style loss, in forward, backward and forward + backward, over N, at D = 512.

    pytest benchmarks/bench_loss.py --benchmark-only

On a GPU: bf16, N from 32 to 262,144. On a CPU: fp32, N to 4,096, no Triton (the interpreter is
no benchmark). Providers whose estimated memory exceeds the device's are skipped, with the reason.
Each case records in extra_info: median ms (pytest-benchmark's own columns), "speedup" over the
reference measured in the same run (or over the fastest other baseline that ran, when the
reference was skipped; benchmarks/conftest.py), TFLOP/s counted as 2 N^2 D (forward), 6 N^2 D
(backward), 8 N^2 D (full), peak memory beyond the inputs in MiB (on a CPU: the resident-set
high-water mark, approximate), and on a GPU the number of kernels launched (N <= 4096). Peak
memory and kernel counts of the backward mode include its (untimed) forward. Results: benchmarks/results/bench_loss_<cpu|cuda>.json.

Targets (DESIGN.md section 1): N = 32,768 bf16 on an H100: full >= 50% of dense bf16 peak, >= 3x
the open_clip-style loss and never slower than it; < 1 GiB beyond the inputs at N = 262,144;
at N = 32, fewer launches than the reference and no slower.
"""

from __future__ import annotations

import os
import re
import time

import pytest
import torch
import torch.nn.functional as F

from convirt_fast.kernels import convirt_loss
from convirt_fast.kernels.reference import convirt_loss_reference

CUDA = torch.cuda.is_available()
D, TAU, LAM = 512, 0.1, 0.75
DTYPE = torch.bfloat16 if CUDA else torch.float32
SIZES = ([32, 256, 1024, 4096, 16384, 32768, 65536, 131072, 262144] if CUDA
         else [32, 256, 1024, 4096])
MODES = ["forward", "backward", "full"]
FULL_ONLY_ABOVE = 65536
FLOPS = {"forward": 2, "backward": 6, "full": 8}  # x N^2 D
TIME_BUDGET_S = float(os.environ.get("CONVIRT_BENCH_BUDGET_S", "0.5" if CUDA else "0.6"))


def open_clip_style(img, txt, tau=TAU, lam=LAM):
    """open_clip's ClipLoss on normalised features (logit_scale = 1/tau): two logits matrices and
    two cross-entropies, weighted by lam as ConVIRT's directions."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits_per_image = (1.0 / tau) * img @ txt.t()
    logits_per_text = (1.0 / tau) * txt @ img.t()
    labels = torch.arange(img.shape[0], device=img.device)
    return lam * F.cross_entropy(logits_per_image, labels) + (1 - lam) * F.cross_entropy(logits_per_text, labels)


PROVIDERS = {
    "fused": lambda x, y: convirt_loss(x, y, TAU, LAM, backend="triton"),
    "reference": lambda x, y: convirt_loss_reference(x, y, TAU, LAM),
    "torch": lambda x, y: convirt_loss(x, y, TAU, LAM, backend="torch"),
    "open_clip": open_clip_style,
}
BASELINES = ["reference", "open_clip", "torch"]  # speedup vs the reference, else the fastest of these


def _estimated_bytes(provider: str, n: int) -> int:
    """Rough peak of a provider beyond its inputs (used only to skip what cannot fit)."""
    elt = torch.finfo(DTYPE).bits // 8
    if provider in ("reference", "open_clip"):  # logits, softmax outputs and their grads, fp32 parts
        return 8 * n * n * max(elt, 4)
    return 4 * n * D * 4 + (512 << 20)  # fused / torch path: O(N * D) + bounded chunks


def _available_bytes() -> int:
    if CUDA:
        torch.cuda.empty_cache()  # earlier cases' cached blocks would read as used
        return torch.cuda.mem_get_info()[0]
    meminfo = open("/proc/meminfo").read()
    return int(re.search(r"MemAvailable:\s+(\d+) kB", meminfo).group(1)) * 1024 // 2


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _peak_bytes(run) -> int | None:
    """Peak memory of one call beyond what was allocated before it: the CUDA allocator's peak, or
    on Linux CPUs the resident-set high-water mark (reset through /proc/self/clear_refs)."""
    if CUDA:
        _sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        _sync()
        return torch.cuda.max_memory_allocated() - base
    try:
        def status(key):
            return int(re.search(rf"{key}:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status("VmRSS")
        run()
        return status("VmHWM") - base
    except OSError:
        return None


def _kernel_count(run) -> int | None:
    if not CUDA:
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        _sync()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("mode", MODES)
def test_loss(benchmark, mode, n, provider):
    if provider == "fused" and not CUDA:
        pytest.skip("Triton needs a GPU (the interpreter is no benchmark)")
    if n > FULL_ONLY_ABOVE and mode != "full":
        pytest.skip(f"N > {FULL_ONLY_ABOVE}: forward + backward only, to keep scripts/gpu_check.sh short")
    need, have = _estimated_bytes(provider, n), _available_bytes()
    if need > have:
        pytest.skip(f"{provider} at N={n} needs ~{need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB free")
    device = "cuda" if CUDA else "cpu"
    g = torch.Generator(device=device).manual_seed(0)
    img = torch.randn(n, D, device=device, dtype=DTYPE, generator=g).requires_grad_(mode != "forward")
    txt = torch.randn(n, D, device=device, dtype=DTYPE, generator=g).requires_grad_(mode != "forward")
    fn = PROVIDERS[provider]

    def forward():
        with torch.no_grad():
            fn(img, txt)
        _sync()

    def full():
        img.grad = txt.grad = None
        fn(img, txt).backward()
        _sync()

    def setup_backward():  # untimed forward, so that only the backward is timed
        img.grad = txt.grad = None
        loss = fn(img, txt)
        _sync()
        return (loss,), {}

    def backward(loss):
        loss.backward()
        _sync()

    run_once = {"forward": forward, "full": full, "backward": lambda: backward(*setup_backward()[0])}[mode]
    if CUDA:
        run_once()  # warm-up: Triton compiles, cuBLAS picks algorithms
    t0 = time.perf_counter()
    peak = _peak_bytes(run_once)  # also sizes the number of rounds
    rounds = int(min(50, max(3, TIME_BUDGET_S / max(time.perf_counter() - t0, 1e-6))))
    if mode == "backward":
        benchmark.pedantic(backward, setup=setup_backward, rounds=rounds, warmup_rounds=0)
    else:
        benchmark.pedantic(forward if mode == "forward" else full, rounds=rounds, warmup_rounds=0)

    median = benchmark.stats.stats.median
    benchmark.extra_info.update({
        "group": f"{mode} N={n}", "provider": provider, "baselines": BASELINES, "mode": mode, "n": n,
        "d": D, "dtype": str(DTYPE).replace("torch.", ""), "median_ms": round(median * 1e3, 4),
        "tflops": round(FLOPS[mode] * n * n * D / median / 1e12, 3),
        "peak_mib": None if peak is None else round(peak / 2**20, 1),
    })
    if n <= 4096 and CUDA:
        benchmark.extra_info["kernels"] = _kernel_count(run_once)
