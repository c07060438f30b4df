"""The ConVIRT loss: fused Triton kernel vs the plain reference, the torch path and open_clip's
ClipLoss (`kernels.reference.open_clip_style`), in forward, backward and forward + backward, over
N, at D = 512.

    pytest benchmarks/bench_loss.py --benchmark-only

On a GPU: bf16, N from 32 to 262,144. On a CPU: fp32, N to 4,096, no Triton (the interpreter is
no benchmark). Providers whose estimated memory exceeds the device's are skipped, with the reason.
Each case records in extra_info: median ms (pytest-benchmark's own columns), "speedup" over the
reference measured in the same run (or over the fastest other baseline that ran, when the
reference was skipped; benchmarks/conftest.py), and for the fused and torch providers also
"vs_reference" and "vs_open_clip" (the baselines run first in each group, so these are known when
the case records), TFLOP/s counted as 2 N^2 D (forward), 6 N^2 D (backward), 8 N^2 D (full) and on
CUDA "pct_peak" (% of the device's dense bf16 peak, `convirt_fast.throughput.peak_flops`; absent on
a GPU it does not know), peak memory
beyond the inputs in MiB (on a CPU: the resident-set high-water mark, approximate), on a GPU the
number of kernels launched (N <= 4096) and for the fused provider the autotuner's picks so far
("autotune"). Peak memory and kernel counts of the backward mode include its (untimed) forward.
`test_sm90a_compile_report` records every shipped tile config's registers, spills, shared memory
and wgmma for sm_90a (kernels/compile_report.py), with the Triton and ptxas versions that compiled
them. Results: benchmarks/results/bench_loss_<cpu|cuda>.json.

TAU, LAM and FLOPS are defined here once; scripts/gpu_check.py loads them from this file.

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

from convirt_fast import convirt_loss
from convirt_fast.kernels.reference import convirt_loss_reference, open_clip_style
from convirt_fast.throughput import peak_flops

CUDA = torch.cuda.is_available()
TAU, LAM = 0.1, 0.75  # the loss benchmarks' hyper-parameters (ConVIRT's tau, lambda)
FLOPS = {"forward": 2, "backward": 6, "full": 8}  # x N^2 D: the minimum GEMM work (kernels/convirt_loss.py)
D = 512
DTYPE = torch.bfloat16 if CUDA else torch.float32
SIZES = ([32, 256, 1024, 4096, 16384, 32768, 65536, 131072, 262144] if CUDA
         else [32, 256, 1024, 4096])
MODES = ["forward", "backward", "full"]
FULL_ONLY_ABOVE = 65536
TIME_BUDGET_S = float(os.environ.get("CONVIRT_BENCH_BUDGET_S", "0.5" if CUDA else "0.6"))
PEAK_FLOPS = peak_flops(torch.device("cuda"), DTYPE) if CUDA else None  # None: an unknown GPU

# baselines first: each group's fused and torch cases then know the baselines' medians
PROVIDERS = {
    "reference": lambda x, y: convirt_loss_reference(x, y, TAU, LAM),
    "open_clip": lambda x, y: open_clip_style(x, y, TAU, LAM),
    "torch": lambda x, y: convirt_loss(x, y, TAU, LAM, backend="torch"),
    "fused": lambda x, y: convirt_loss(x, y, TAU, LAM, backend="triton"),
}
BASELINES = ["reference", "open_clip", "torch"]  # speedup vs the reference, else the fastest of these
_medians: dict[tuple[str, str], float] = {}  # (group, provider) -> median s, this run


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
    group = f"{mode} N={n}"
    _medians[group, provider] = median
    tflops = FLOPS[mode] * n * n * D / median / 1e12
    benchmark.extra_info.update({
        "group": group, "provider": provider, "baselines": BASELINES, "mode": mode, "n": n,
        "d": D, "dtype": str(DTYPE).replace("torch.", ""), "median_ms": round(median * 1e3, 4),
        "tflops": round(tflops, 3),
        "peak_mib": None if peak is None else round(peak / 2**20, 1),
    })
    if provider in ("fused", "torch"):
        for base in ("reference", "open_clip"):
            if (group, base) in _medians:
                benchmark.extra_info[f"vs_{base}"] = round(_medians[group, base] / median, 3)
    if PEAK_FLOPS:
        benchmark.extra_info["pct_peak"] = round(100 * tflops * 1e12 / PEAK_FLOPS, 2)
    if n <= 4096 and CUDA:
        benchmark.extra_info["kernels"] = _kernel_count(run_once)
    if provider == "fused":
        from convirt_fast.kernels.triton_loss import autotune_choices

        benchmark.extra_info["autotune"] = autotune_choices()


def test_sm90a_compile_report(benchmark):
    """Registers, spills, shared memory and wgmma of every shipped tile config for sm_90a, into
    this suite's JSON (one record; no timing of interest: the compile runs once, untimed)."""
    pytest.importorskip("triton")
    from convirt_fast.kernels import compile_report

    if compile_report.ptxas_path() is None:
        pytest.skip("Triton's bundled ptxas is absent")
    report = compile_report.sm90a_report()
    benchmark.pedantic(lambda: None, rounds=1, warmup_rounds=0)
    import triton

    benchmark.extra_info.update({"triton": triton.__version__,
                                 "ptxas": compile_report.ptxas_version(compile_report.ptxas_path()),
                                 "sm90a_report": report, "problems": compile_report.problems(report)})
