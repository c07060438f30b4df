"""The stages of scripts/gpu_check.sh (v2, issue 13): one call on one H100/H200, at most 7 minutes.

    scripts/gpu_check.sh [--dry-run]                       # the one command (builds _C, puts the
                                                           # checkout on PYTHONPATH, runs this file)
    python scripts/gpu_check.py --out DIR [--dry-run]      # the stages
    python scripts/gpu_check.py --out DIR --table-only     # print table.md again from gpu_check.json

One function per stage, each with its own time budget. A stage that raises is recorded (status
"error", the exception in the JSON and the table) and the next stage still runs; the whole run
tracks a deadline (GPU_CHECK_T0 + GPU_CHECK_DEADLINE_S, set by the shell) so that the GPU tests,
run last, get what is left. gpu_check.json is rewritten after every stage, so a run killed by its
time cap still leaves every finished stage's numbers, and the shell prints the table from it.

Nothing heavy is imported at module level: the dry run (CI) and the table need only the standard
library; torch and Triton are imported inside the stages.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import importlib.util
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
# The H100/H200 SXM dense bf16 datasheet peak, the issue's yardstick (DESIGN.md section 1), reported
# beside the device's own peak (convirt_fast.throughput.peak_flops: an H100 PCIe's is lower).
DATASHEET_TFLOPS = 989.0
MODES = ("forward", "backward", "full")
TESTS_RESERVE_S = 40  # no stage before the GPU tests starts unless this much would remain for them
MEMORY_TARGET_BYTES = 10**9  # "under 1 GB" beyond inputs and gradients at N = 262,144
# The sizes of the issue. tests/test_gpu_check.py shrinks them (and sets DEVICE = "cpu", BACKEND =
# "torch") to run the stages' code on a CPU in seconds, so the real path cannot rot between GPU runs.
SIZES = {"ceiling_n": 8192, "copy_bytes": 1 << 30, "correctness_n": (4097, 8192), "correctness_d": 512,
         "loss_32k": (32768, 512), "loss_64k": (65536, 768), "big_n": 262144, "big_d": 512}
DEVICE = "cuda"
BACKEND = "triton"


# ---------------------------------------------------------------------------------------------
# What the stages use from convirt_fast and benchmarks/, imported when a stage first needs it.
# ---------------------------------------------------------------------------------------------

class Unavailable(Exception):
    """What a stage needs cannot be had in this run (e.g. no time left to compile): recorded as
    'unavailable', not as a failure. A failing import of convirt_fast is a failure ("error")."""


E2E_ARGS = ["benchmarks/bench_train.py", "--benchmark-only", "-p", "no:cacheprovider", "-q", "-k", "256"]
E2E_JSON = "bench_train_cuda.json"  # written by benchmarks/conftest.py into CONVIRT_BENCH_DIR


@functools.lru_cache(maxsize=None)
def bench_loss():
    """benchmarks/bench_loss.py, where the loss benchmarks' TAU, LAM and FLOPS (x N^2 D per mode)
    are defined once; loaded by path (benchmarks/ is no package), on first use."""
    path = REPO / "benchmarks" / "bench_loss.py"
    spec = importlib.util.spec_from_file_location("_gpu_check_bench_loss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def api_fused_loss() -> Callable:
    """(img, txt) -> loss with BACKEND (Triton on the GPU), at the benchmarks' tau and lambda."""
    from convirt_fast import convirt_loss

    tau0, lam0 = bench_loss().TAU, bench_loss().LAM
    return lambda img, txt, tau=tau0, lam=lam0: convirt_loss(img, txt, tau, lam, backend=BACKEND)


def api_reference() -> Callable:
    from convirt_fast.kernels.reference import convirt_loss_reference

    tau0, lam0 = bench_loss().TAU, bench_loss().LAM
    return lambda img, txt, tau=tau0, lam=lam0: convirt_loss_reference(img, txt, tau, lam)


def api_clip_loss() -> Callable:
    """The open_clip-style ClipLoss baseline (kernels/reference.py), at the benchmarks' tau and lambda."""
    from convirt_fast.kernels.reference import open_clip_style

    tau0, lam0 = bench_loss().TAU, bench_loss().LAM
    return lambda img, txt, tau=tau0, lam=lam0: open_clip_style(img, txt, tau, lam)


def api_triton_loss():
    from convirt_fast.kernels import triton_loss

    return triton_loss


def api_sm90a_report() -> list[dict]:
    """Every tile config compiled offline for sm_90a: kernel, config, regs, spills, shared_bytes, wgmma,
    and the Triton and ptxas versions that compiled it."""
    from convirt_fast.kernels import compile_report

    return compile_report.sm90a_report()


def device_peak_tflops() -> float | None:
    """This device's dense bf16 peak in TFLOP/s (convirt_fast.throughput.peak_flops); None on a CPU
    or a GPU it does not know."""
    import torch

    from convirt_fast.throughput import peak_flops

    peak = peak_flops(torch.device(DEVICE), torch.bfloat16)
    return None if peak is None else peak / 1e12


def pct(part: float, whole: float | None) -> float | None:
    return round(100 * part / whole, 1) if whole else None


# ---------------------------------------------------------------------------------------------
# The runner: stages, budgets, the deadline, the JSON.
# ---------------------------------------------------------------------------------------------

@dataclass
class Stage:
    name: str
    budget_s: float  # planned seconds; sizes the stage's work and decides whether it starts at all
    fn: Callable[["Run", dict], None]  # fills its data dict as it goes: partial numbers survive errors
    title: str


class Run:
    def __init__(self, out: Path, dry_run: bool, deadline: float):
        self.out, self.dry_run, self.deadline = out, dry_run, deadline
        self.json_path = out / "gpu_check.json"
        self.results = {"meta": _meta(dry_run, deadline), "stages": {}}
        self.skip_reason = "dry run" if dry_run else None

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        os.replace(tmp, self.json_path)  # atomic: a kill mid-write leaves the previous stage's JSON

    def stage(self, name: str) -> dict:
        return self.results["stages"].get(name, {}).get("data", {})


def _meta(dry_run: bool, deadline: float) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"version": 2, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git": git("rev-parse", "--short", "HEAD"), "dirty_paths": len(git("status", "--porcelain").splitlines()),
            "dry_run": dry_run, "python": sys.version.split()[0],
            "deadline_s": round(deadline - float(os.environ.get("GPU_CHECK_T0", time.time())), 1)}


def run_stage(run: Run, stage: Stage) -> None:
    record = {"title": stage.title, "budget_s": stage.budget_s}
    reserve = 0 if stage.name == "gpu_tests" else TESTS_RESERVE_S
    if run.skip_reason:
        record.update(status="skipped", reason=run.skip_reason)
    elif run.left() - reserve < stage.budget_s / 2:  # stages usually take well under their budget
        record.update(status="skipped", reason=f"time budget spent ({run.left():.0f} s left)")
    else:
        print(f"\n== {stage.name}: {stage.title} (budget {stage.budget_s:.0f} s, {run.left():.0f} s left) ==",
              flush=True)
        data: dict = {}
        record["data"] = data
        t0 = time.monotonic()
        try:
            stage.fn(run, data)
            record["status"] = data.pop("_status", "ok")
        except Unavailable as e:
            record.update(status="unavailable", reason=str(e))
        except KeyboardInterrupt:  # the shell's time cap (timeout -s INT): keep what was measured
            record.update(status="interrupted", reason="time cap reached")
            run.skip_reason = "time cap reached"
        except Exception as e:  # noqa: BLE001: one stage's failure must not stop the others
            record.update(status="error", reason=f"{type(e).__name__}: {e}"[:500], traceback=traceback.format_exc())
            print(traceback.format_exc(), flush=True)
        record["seconds"] = round(time.monotonic() - t0, 1)
        print(f"-- {stage.name}: {record['status']} in {record['seconds']} s"
              + (f" ({record['reason']})" if record.get("reason") else ""), flush=True)
        _free_gpu()
    if record["status"] == "skipped":
        print(f"-- {stage.name}: skipped ({record['reason']})", flush=True)
    run.results["stages"][stage.name] = record
    run.save()


def _free_gpu() -> None:
    """Return cached blocks between stages: the next stage's subprocesses need the memory."""
    torch = sys.modules.get("torch")
    gc.collect()
    if torch is not None and DEVICE == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Measuring helpers (torch/Triton imported lazily).
# ---------------------------------------------------------------------------------------------

def median_ms(fn: Callable, rep_ms: float, grad_to_none=None) -> float:
    """triton.testing.do_bench's median in ms, whatever its signature in this Triton version
    (return_mode in 3.x; quantiles earlier). do_bench flushes L2 between calls, outside the timing."""
    if DEVICE != "cuda":  # the CPU smoke test: a plain median of a few calls
        times = []
        for _ in range(3):
            for t in grad_to_none or ():
                t.grad = None
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[1]
    from triton.testing import do_bench

    params = inspect.signature(do_bench).parameters
    kwargs = {"rep": rep_ms} if "rep" in params else {}
    if "warmup" in params:
        kwargs["warmup"] = min(25, rep_ms)
    if grad_to_none is not None:
        if "grad_to_none" in params:
            kwargs["grad_to_none"] = grad_to_none
        else:  # reset inside the timed call instead (a few host assignments)
            inner = fn

            def fn():
                for t in grad_to_none:
                    t.grad = None
                inner()
    if "return_mode" in params:
        kwargs["return_mode"] = "median"
    elif "quantiles" in params:
        kwargs["quantiles"] = [0.5]
    result = do_bench(fn, **kwargs)
    return float(result[0] if isinstance(result, (list, tuple)) else result)


def first_call_s(fn: Callable) -> float:
    """Seconds of one synchronised call: the first includes Triton's compile and autotuning."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return round(time.perf_counter() - t0, 3)


def time_loss_mode(fn: Callable, img, txt, mode: str, rep_ms: float) -> float:
    """Median ms of one mode: forward (no grad), backward (on a retained graph, forward untimed)
    or full (forward + backward); gradients are reset before every call, so none accumulate."""
    import torch

    if mode == "forward":
        def forward():
            with torch.no_grad():
                fn(img, txt)
        return median_ms(forward, rep_ms)
    if mode == "full":
        return median_ms(lambda: fn(img, txt).backward(), rep_ms, grad_to_none=[img, txt])
    loss = fn(img, txt)
    try:
        return median_ms(lambda: loss.backward(retain_graph=True), rep_ms, grad_to_none=[img, txt])
    finally:
        del loss
        img.grad = txt.grad = None


def bf16_inputs(n: int, d: int, seed: int = 0):
    import torch

    g = torch.Generator(device=DEVICE).manual_seed(seed)
    make = lambda: torch.randn(n, d, device=DEVICE, dtype=torch.bfloat16, generator=g).requires_grad_()  # noqa: E731
    return make(), make()


def trap_inputs(n: int, d: int, dtype, seed: int):
    """Pairs pushed apart by a shared direction e (cosines about -0.1 +- 0.04, positives about -0.01):
    at tau = 0.01 the logits sit near -10 and exp(logit - 1/tau) is 0 in fp32, the underflow trap a
    fixed shift falls into (DESIGN.md section 1); the loss itself stays of order 1."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator(device=DEVICE).manual_seed(seed)
    unit = lambda: F.normalize(torch.randn(n, d, device=DEVICE, generator=g, dtype=torch.float64), dim=1)  # noqa: E731
    e = F.normalize(torch.randn(d, device=DEVICE, generator=g, dtype=torch.float64), dim=0)
    z = unit()
    img = 0.9**0.5 * z + 0.1**0.5 * e
    txt = 0.9**0.5 * (0.1 * z + 0.99**0.5 * unit()) - 0.1**0.5 * e
    return img.to(dtype), txt.to(dtype)


def loss_and_grads(fn: Callable, img, txt, tau: float):
    x, y = img.detach().clone().requires_grad_(), txt.detach().clone().requires_grad_()
    loss = fn(x, y, tau, bench_loss().LAM)
    loss.backward()
    return loss.detach().double(), x.grad.double(), y.grad.double()


def rel_errors(got, exact) -> dict:
    import torch

    (l, gx, gy), (l64, gx64, gy64) = got, exact
    finite = bool(torch.isfinite(l).item() and torch.isfinite(gx).all().item() and torch.isfinite(gy).all().item())
    grad = max(((gx - gx64).norm() / gx64.norm()).item(), ((gy - gy64).norm() / gy64.norm()).item())
    return {"loss": abs((l - l64).item()) / max(abs(l64.item()), 1e-30), "grad": grad, "finite": finite}


@contextlib.contextmanager
def forced_multi_block(module, n: int):
    """Shrink the forward's column-scratch budget to 3 programs' worth (8 bytes x N each): every
    program then loops over many row blocks and merges its column partials across them."""
    saved = module.COL_SCRATCH_BYTES
    module.COL_SCRATCH_BYTES = 8 * n * 3
    try:
        yield
    finally:
        module.COL_SCRATCH_BYTES = saved


def run_logged(cmd: list[str], timeout_s: float, log_path: Path | None, env=None, echo=True) -> tuple[int, str]:
    """Run cmd under `timeout -s INT` (pytest then still prints its summary and writes its JSON),
    streaming its output to log_path and our stdout (run.log). Returns (exit code, output)."""
    capped = ["timeout", "-s", "INT", "-k", "10", str(max(1, int(timeout_s))), *cmd]
    print("$ " + " ".join(cmd) + f"   (cap {int(timeout_s)} s)", flush=True)
    lines = []
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(log_path, "a")) if log_path else None
        proc = subprocess.Popen(capped, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        try:
            for line in proc.stdout:
                lines.append(line)
                if log:
                    log.write(line)
                if echo:
                    sys.stdout.write(line)
            rc = proc.wait()
        except KeyboardInterrupt:  # our own cap: pass it on (timeout forwards it to pytest), then go
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            raise
    sys.stdout.flush()
    return rc, "".join(lines)


def pytest_summary(output: str) -> dict:
    """Counts from pytest's last summary line ('3 passed, 1 failed, 2 skipped in 4.5s')."""
    for line in reversed(output.strip().splitlines()):
        found = re.findall(r"(\d+)(?:/\d+)? (passed|failed|skipped|errors?|deselected|xfailed|xpassed|warnings?"
                           r"|tests? collected)", line)
        if found:
            plural = {"error": "errors", "warning": "warnings", "test collected": "collected",
                      "tests collected": "collected"}
            return {plural.get(k, k): int(v) for v, k in found}
    return {}


def classify_kernel(name: str) -> str:
    """Profiler category of a CUDA kernel of the fused loss (names of kernels/triton_loss.py, cuBLAS)."""
    low = name.lower()
    if "merge" in low:  # _merge_kernel: row and column partials -> lr, lc, the loss
        return "merge of partials"
    if "lse" in low:
        return "LSE (forward GEMM pass)"
    if "strip" in low:
        return "gradient strips"
    if re.search(r"gemm|nvjet|cutlass|xmma|cublas|s16816|sm90_|sm100_", low):
        return "GEMMs (cuBLAS)"
    if re.search(r"prologue|scale_rows|input_grad|epilogue", low):
        return "prologue/epilogue"
    return "other"


# ---------------------------------------------------------------------------------------------
# The stages, in run order.
# ---------------------------------------------------------------------------------------------

def stage_env(run: Run, data: dict) -> None:
    import torch
    import triton

    data.update(torch=torch.__version__, cuda=torch.version.cuda, triton=triton.__version__,
                cudnn=torch.backends.cudnn.version(), python=sys.version.split()[0])
    if DEVICE != "cuda":
        return
    props = torch.cuda.get_device_properties(0)
    data.update(gpu=props.name, sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                capability=f"{props.major}.{props.minor}", peak_bf16_tflops=device_peak_tflops())
    fields = "clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,power.limit,temperature.gpu,driver_version"
    try:
        row = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10).stdout.strip().split(", ")
        data.update(zip(fields.replace(".", "_").split(","), row))
    except (OSError, subprocess.SubprocessError) as e:
        data["nvidia_smi"] = f"unavailable: {e}"
    with open(run.out / "env.txt", "a") as f:
        f.write("\n# gpu_check.py env stage\n" + "".join(f"{k}: {v}\n" for k, v in data.items()))


def stage_build(run: Run, data: dict) -> None:
    """Recorded from the shell, which built _C before Python started (GPU_CHECK_BUILD_*)."""


def stage_ceilings(run: Run, data: dict) -> None:
    import torch

    n = SIZES["ceiling_n"]
    a, b = (torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    c = torch.empty_like(a)
    torch.mm(a, b, out=c)  # cuBLAS picks its algorithm
    ms = median_ms(lambda: torch.mm(a, b, out=c), 300)
    data.update(n=n, cublas_bf16_ms=round(ms, 4), cublas_bf16_tflops=round(2 * n**3 / ms / 1e9, 1))
    del a, b, c
    nbytes = SIZES["copy_bytes"]
    src = torch.empty(nbytes, device=DEVICE, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), 300)
    # bytes moved = read + write, the convention of STREAM-style copy bandwidth
    data.update(copy_bytes=nbytes, copy_ms=round(ms, 4), copy_gbps_read_plus_write=round(2 * nbytes / ms / 1e6, 1))


def stage_correctness(run: Run, data: dict) -> None:
    import torch

    fused, reference, module = api_fused_loss(), api_reference(), api_triton_loss()
    # (loss, gradient) relative tolerances against fp64 on the same (rounded) inputs. bf16: the loss is
    # accumulated in fp32 (expected ~1e-5), the gradients are rounded to bf16 twice (the strip H and
    # the output: ~2^-9 each). Plain torch in the input dtype is measured beside it, for comparison
    # only: in bf16 its logits are rounded to bf16, so 2x its error would be no test at all.
    tolerances = {torch.bfloat16: (2e-3, 2e-2), torch.float32: (2e-5, 2e-4)}
    data["float32_matmul_precision"] = torch.get_float32_matmul_precision()  # "highest": no TF32 in fp32
    cases = data["cases"] = []
    for dtype in (torch.bfloat16, torch.float32):
        for n in SIZES["correctness_n"]:
            for tau in (0.01, 0.1):
                img, txt = trap_inputs(n, SIZES["correctness_d"], dtype, seed=n)
                exact = loss_and_grads(reference, img.double(), txt.double(), tau)
                plain = rel_errors(loss_and_grads(reference, img, txt, tau), exact)  # plain torch, same dtype
                for path in ("default", "multi-block"):
                    case = {"dtype": str(dtype).replace("torch.", ""), "n": n, "tau": tau, "path": path,
                            "plain_torch_loss_err": plain["loss"], "plain_torch_grad_err": plain["grad"]}
                    cases.append(case)
                    try:
                        with forced_multi_block(module, n) if path == "multi-block" else contextlib.nullcontext():
                            err = rel_errors(loss_and_grads(fused, img, txt, tau), exact)
                    except Exception as e:  # noqa: BLE001: recorded as a failed case; the others still run
                        case.update(status="fail", finite=False, reason=f"{type(e).__name__}: {e}"[:300])
                        print(f"{case}", flush=True)
                        continue
                    loss_tol, grad_tol = tolerances[dtype]
                    ok = err["finite"] and err["loss"] <= loss_tol and err["grad"] <= grad_tol
                    case.update(loss_err=err["loss"], grad_err=err["grad"], finite=err["finite"],
                                loss_tol=loss_tol, grad_tol=grad_tol, status="pass" if ok else "fail")
                    print(f"{case['dtype']:>8} N={n:<5} tau={tau:<4} {path:<11} loss err {err['loss']:.2e} "
                          f"(tol {loss_tol:.1e})  grad err {err['grad']:.2e} (tol {grad_tol:.1e})  "
                          f"{'finite' if err['finite'] else 'NON-FINITE'}  {case['status']}", flush=True)
                del img, txt, exact
    ran = [c for c in cases if c.get("status") in ("pass", "fail")]
    data.update(passed=sum(c["status"] == "pass" for c in ran), total=len(ran),
                non_finite=sum(not c.get("finite") for c in ran))
    if data["passed"] < data["total"]:
        data["_status"] = "fail"


def loss_comparison(run: Run, data: dict, n: int, d: int, rep_ms: float) -> None:
    """fused vs open_clip-style vs reference, forward/backward/full, do_bench medians, one process."""
    import torch

    providers = {"fused": api_fused_loss(), "reference": api_reference(), "open_clip": api_clip_loss()}
    flops = bench_loss().FLOPS
    cublas = run.stage("ceilings").get("cublas_bf16_tflops")
    peak = device_peak_tflops()
    img, txt = bf16_inputs(n, d)
    data.update(n=n, d=d, dtype="bfloat16", cublas_tflops=cublas, peak_tflops=peak)
    rows = data["providers"] = {}
    for name, fn in providers.items():
        row = rows[name] = {}
        try:
            row["first_call_s"] = first_call_s(lambda: fn(img, txt).backward())  # compile + autotune
            row["finite"] = bool(torch.isfinite(img.grad).all().item() and torch.isfinite(txt.grad).all().item())
            img.grad = txt.grad = None
            for mode in MODES:
                ms = time_loss_mode(fn, img, txt, mode, rep_ms)
                tflops = flops[mode] * n * n * d / ms / 1e9
                row[mode] = {"ms": round(ms, 4), "tflops": round(tflops, 1), "pct_peak": pct(tflops, peak),
                             "pct_datasheet": pct(tflops, DATASHEET_TFLOPS), "pct_cublas": pct(tflops, cublas)}
                print(f"{name:<10} {mode:<8} N={n} D={d}: {ms:9.3f} ms  {tflops:7.1f} TFLOP/s", flush=True)
        except Exception as e:  # noqa: BLE001: OOM of a baseline (N x N matrices), or any provider's failure
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            print(f"{name}: {row['error']}", flush=True)
        img.grad = txt.grad = None
        _free_gpu()
    fused = rows.get("fused", {})
    for mode in MODES:
        for base in ("open_clip", "reference"):
            if mode in fused and mode in rows.get(base, {}):
                fused[mode][f"x_vs_{base}"] = round(rows[base][mode]["ms"] / fused[mode]["ms"], 2)
    if any(mode not in fused for mode in MODES):
        data["_status"] = "error"
    elif not fused.get("finite", True):
        data["_status"] = "fail"


def stage_loss_32k(run: Run, data: dict) -> None:
    loss_comparison(run, data, *SIZES["loss_32k"], rep_ms=200)


def stage_loss_64k(run: Run, data: dict) -> None:
    loss_comparison(run, data, *SIZES["loss_64k"], rep_ms=300)  # siglip-kernel's published configuration


def launched_kernels(module) -> list[dict]:
    """Registers, spills, shared memory and wgmma of every kernel variant Triton compiled in this
    process (the JIT caches of triton_loss's kernels, through any autotuner/heuristics wrapper;
    autotuning compiles and launches every candidate config, so the candidates are here too)."""
    rows, seen = [], set()
    for name, obj in sorted(vars(module).items()):
        fn = obj
        for _ in range(4):  # Autotuner / Heuristics wrap the JITFunction in .fn
            if fn is None or hasattr(fn, "device_caches"):
                break
            fn = getattr(fn, "fn", None)
        caches = getattr(fn, "device_caches", None)
        if not isinstance(caches, dict) or id(fn) in seen:
            continue
        seen.add(id(fn))
        for entry in list(caches.values()):  # Triton 3.x: (kernel_cache, ..., binder); kernel_cache first
            parts = entry if isinstance(entry, tuple) else (entry,)
            kernel_cache = next((e for e in parts if isinstance(e, dict)), {})
            rows += [_kernel_row(name, k, autotuned=hasattr(obj, "configs"))
                     for k in kernel_cache.values() if hasattr(k, "metadata")]
    return rows


def _kernel_row(name: str, kernel, autotuned: bool) -> dict:
    load_error = None
    if getattr(kernel, "n_regs", None) is None and hasattr(kernel, "_init_handles"):
        try:
            kernel._init_handles()  # Triton fills n_regs/n_spills when it loads the binary
        except Exception as e:  # noqa: BLE001: e.g. a candidate over the shared-memory limit (autotuning skipped it)
            load_error = f"{type(e).__name__}: {e}"[:200]
    meta = getattr(kernel, "metadata", None)
    ptx = (getattr(kernel, "asm", None) or {}).get("ptx", "")
    # the tile constexprs, from the compiled source (ASTSource.constants: (arg index,) -> value)
    src = getattr(kernel, "src", None)
    arg_names = getattr(getattr(src, "fn", None), "arg_names", [])
    consts = {arg_names[k[0]]: v for k, v in (getattr(src, "constants", None) or {}).items()
              if isinstance(k, tuple) and len(k) == 1 and k[0] < len(arg_names)}
    tiles = " ".join(f"{k}={v}" for k, v in sorted(consts.items()) if k.startswith("BLOCK"))
    dtype = (getattr(src, "signature", None) or {}).get(arg_names[0]) if arg_names else None
    warps, stages = getattr(meta, "num_warps", None), getattr(meta, "num_stages", None)
    return {"kernel": name, "autotuned": autotuned, "dtype": dtype,
            "config": f"{tiles} warps={warps} stages={stages}".strip(),
            "regs": getattr(kernel, "n_regs", None), "spills": getattr(kernel, "n_spills", None),
            "shared_bytes": getattr(meta, "shared", None), "wgmma": ("wgmma" in ptx) if ptx else None,
            **({"load_error": load_error} if load_error else {})}


def mark_chosen(rows: list[dict], choices: dict) -> None:
    """chosen = the autotuner picked this variant's config (its 'K=V' tokens are all in the row's)."""
    picked = [set(str(c).split()) for c in choices.values()]
    for r in rows:
        tokens = set(str(r.get("config", "")).split())
        r["chosen"] = (not r.get("autotuned")) or any(p and p <= tokens for p in picked)
    for name in {r["kernel"] for r in rows if r.get("autotuned")}:
        mine = [r for r in rows if r["kernel"] == name]
        if not any(r["chosen"] for r in mine):  # choices in another format: unknown, so shown, not hidden
            for r in mine:
                r["chosen"] = None


def stage_resources(run: Run, data: dict) -> None:
    module = api_triton_loss()
    choices = data["autotune"] = module.autotune_choices()
    rows = launched_kernels(module)
    source = "launched in this process"
    if not rows:  # nothing ran (earlier stages failed): the offline sm_90a compile report instead
        if run.left() - TESTS_RESERVE_S < 60:  # it compiles every config: tens of seconds
            raise Unavailable("no kernel launched in this process, and no time left for the offline sm_90a report")
        rows, source = api_sm90a_report(), "offline sm_90a compile (compile_report.sm90a_report)"
    else:
        mark_chosen(rows, choices)
    data.update(source=source, kernels=rows)
    for r in rows:
        print("  ".join(f"{k}={v}" for k, v in r.items()), flush=True)
    # a failure is a spill in what actually runs: a launched, chosen variant
    if any(r.get("spills") and r.get("chosen") is not False for r in rows):
        data["_status"] = "fail"


def stage_big(run: Run, data: dict) -> None:
    """N = 262,144, D = 512, bf16, forward + backward once (after one warm-up call): time and the
    allocator's peak beyond the inputs and their gradients."""
    import torch

    n, d = SIZES["big_n"], SIZES["big_d"]
    fused = api_fused_loss()
    img, txt = bf16_inputs(n, d)

    def full():
        img.grad = txt.grad = None
        fused(img, txt).backward()

    data.update(n=n, d=d, dtype="bfloat16", first_call_s=first_call_s(full))
    img.grad = txt.grad = None
    _free_gpu()
    cuda = DEVICE == "cuda"
    base = torch.cuda.memory_allocated() if cuda else 0  # the inputs (and any other live tensor)
    grads = 2 * n * d * img.element_size()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()  # one call of ~1 s: host timing around synchronisations is exact enough
    full()
    sync()
    ms = (time.perf_counter() - t0) * 1e3
    extra = torch.cuda.max_memory_allocated() - base - grads if cuda else None
    tflops = bench_loss().FLOPS["full"] * n * n * d / ms / 1e9
    peak = device_peak_tflops()
    data.update(ms=round(ms, 2), tflops=round(tflops, 1), peak_tflops=peak, pct_peak=pct(tflops, peak),
                pct_datasheet=pct(tflops, DATASHEET_TFLOPS),
                extra_bytes=extra, extra_mib=None if extra is None else round(extra / 2**20, 1),
                target_bytes=MEMORY_TARGET_BYTES,
                finite=bool(torch.isfinite(img.grad).all().item() and torch.isfinite(txt.grad).all().item()))
    print(f"N={n}: {ms:.1f} ms, {tflops:.1f} TFLOP/s, {data['extra_mib']} MiB beyond inputs and gradients", flush=True)
    if (extra is not None and extra >= MEMORY_TARGET_BYTES) or not data["finite"]:
        data["_status"] = "fail"


def stage_profile(run: Run, data: dict) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    (n, d), iters = SIZES["loss_32k"], 3
    fused = api_fused_loss()
    img, txt = bf16_inputs(n, d)

    def full():
        img.grad = txt.grad = None
        fused(img, txt).backward()

    first_call_s(full)  # compiled already by loss_32k unless that stage failed
    activity, device_type = ((ProfilerActivity.CUDA, torch.autograd.DeviceType.CUDA) if DEVICE == "cuda"
                             else (ProfilerActivity.CPU, torch.autograd.DeviceType.CPU))  # CPU: smoke test
    with profile(activities=[activity]) as prof:
        for _ in range(iters):
            full()
        sync()
    per_kernel: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == device_type:
            per_kernel.setdefault(e.name, []).append(e.time_range.elapsed_us())
    total_us = sum(sum(v) for v in per_kernel.values()) or 1.0
    cats: dict[str, float] = {}
    for name, times in per_kernel.items():
        cats[classify_kernel(name)] = cats.get(classify_kernel(name), 0.0) + sum(times)
    gemm_flops = {"LSE (forward GEMM pass)": 2, "gradient strips": 2, "GEMMs (cuBLAS)": 4}  # x N^2 D per iteration
    data.update(n=n, d=d, iterations=iters, gpu_ms_per_iter=round(total_us / iters / 1e3, 3), categories={
        cat: {"ms_per_iter": round(us / iters / 1e3, 3), "pct": round(100 * us / total_us, 1),
              **({"tflops": round(gemm_flops[cat] * n * n * d / (us / iters) / 1e6, 1)} if cat in gemm_flops else {})}
        for cat, us in sorted(cats.items(), key=lambda kv: -kv[1])})
    lines = [f"fused loss, forward + backward, N={n} D={d} bf16, {iters} iterations; GPU time per iteration "
             f"{data['gpu_ms_per_iter']} ms", "", f"{'category':<26} {'ms/iter':>9} {'%':>6} {'TFLOP/s':>8}"]
    lines += [f"{c:<26} {v['ms_per_iter']:>9.3f} {v['pct']:>6.1f} {v.get('tflops', ''):>8}"
              for c, v in data["categories"].items()]
    lines += ["", f"{'kernel':<90} {'calls':>6} {'ms/iter':>9} {'category'}"]
    for name, times in sorted(per_kernel.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"{name[:90]:<90} {len(times):>6} {sum(times) / iters / 1e3:>9.3f} {classify_kernel(name)}")
    for sort_by in ("self_device_time_total", "self_cuda_time_total"):  # renamed in torch 2.4+
        try:
            lines += ["", prof.key_averages().table(sort_by=sort_by, row_limit=25)]
            break
        except (AttributeError, KeyError, ValueError, TypeError):
            continue
    (run.out / "profile.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12]), flush=True)


def stage_e2e(run: Run, data: dict) -> None:
    """pairs/s of the real trainer step with our loader and of the plain recipe, in one pytest call."""
    json_path = run.out / E2E_JSON
    env = dict(os.environ, CONVIRT_BENCH_DIR=str(run.out))
    cap = min(STAGE_BUDGETS["e2e"], run.left() - TESTS_RESERVE_S)
    rc, output = run_logged([sys.executable, "-m", "pytest", *E2E_ARGS], cap, None, env=env)
    data.update(exit_code=rc, pytest=pytest_summary(output))
    if not json_path.exists():
        raise RuntimeError(f"pytest exit code {rc}: no {E2E_JSON} written")
    records = json.loads(json_path.read_text()).get("results", [])
    data["providers"] = {}
    for r in records:
        info = r.get("extra_info", {})
        if "provider" in info:
            data["providers"][info["provider"]] = {k: v for k, v in info.items() if k.startswith("pairs_per_s")
                                                   or k in ("group", "steps", "image_size", "batch_size")}
        elif "skipped" in r:
            data.setdefault("skipped", []).append(f"{r['name']}: {r['skipped']}")
    if rc not in (0, 5) or not data["providers"]:
        data["_status"] = "error"


def stage_gpu_tests(run: Run, data: dict) -> None:
    """Collect `pytest -m gpu tests/`, then run the files whose GPU tests collected, with what is left
    (a module that cannot be imported here holds no runnable GPU test; its error is in the log)."""
    log = run.out / "gpu_tests.log"
    log.write_text("")
    base = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider"]
    rc, output = run_logged([*base, "tests/", "--collect-only", "-q", "--continue-on-collection-errors"],
                            min(90, max(10, run.left() / 3)), log, echo=False)
    # What the earlier stages do not cover first (the sync-free step, GPU decode); the loss tests,
    # which the correctness stage already samples, last: the time may run out inside them.
    first = ("tests/test_trainer.py", "tests/test_loader.py", "tests/test_augment.py")
    found = set(re.findall(r"^([^:\s]+\.py)::", output, re.M))
    files = [f for f in first if f in found] + sorted(found.difference(first))
    data.update(collected_files=files, collection=pytest_summary(output))
    print(f"GPU tests collected in {len(files)} files: {' '.join(files)}", flush=True)
    if not files:
        data["_status"] = "error" if rc not in (0, 5) else "ok"
        return
    rc, output = run_logged([*base, *files, "-q", "-rs"], run.left() - 15, log)  # + 10 s to stop: the deadline
    # timeout's exit code: 124 when it stopped pytest, 137 when it had to kill it
    data.update(exit_code=rc, result=pytest_summary(output), timed_out=rc in (124, 137))
    if rc not in (0, 5):
        data["_status"] = "fail"


STAGE_BUDGETS = {"env": 10, "build_C": 60, "ceilings": 15, "correctness": 60, "loss_32k": 60, "loss_64k": 45,
                 "resources": 15, "big_262k": 30, "profile": 15, "e2e": 130, "gpu_tests": 30}
STAGES = [
    Stage("env", STAGE_BUDGETS["env"], stage_env, "GPU, clocks, versions"),
    Stage("build_C", STAGE_BUDGETS["build_C"], stage_build, "CMake build of convirt_fast._C (shell)"),
    Stage("ceilings", STAGE_BUDGETS["ceilings"], stage_ceilings, "cuBLAS bf16 8192^3, device copy"),
    Stage("correctness", STAGE_BUDGETS["correctness"], stage_correctness,
          "bf16/fp32, N 4097/8192, tau 0.01/0.1, default + multi-block, vs fp64"),
    Stage("loss_32k", STAGE_BUDGETS["loss_32k"], stage_loss_32k, "N=32768 D=512 bf16 vs open_clip, reference"),
    Stage("e2e", STAGE_BUDGETS["e2e"], stage_e2e, "ResNet-50 + BERT-base, 224 px, batch 256: pairs/s"),
    Stage("loss_64k", STAGE_BUDGETS["loss_64k"], stage_loss_64k, "N=65536 D=768 bf16 (siglip-kernel's config)"),
    Stage("resources", STAGE_BUDGETS["resources"], stage_resources, "registers, spills, smem, wgmma, autotune"),
    Stage("big_262k", STAGE_BUDGETS["big_262k"], stage_big, "N=262144 D=512 full once: time, extra memory"),
    Stage("profile", STAGE_BUDGETS["profile"], stage_profile, "per-kernel breakdown, N=32768"),
    Stage("gpu_tests", STAGE_BUDGETS["gpu_tests"], stage_gpu_tests, "pytest -m gpu tests/ with the time left"),
]


def record_build(run: Run) -> None:
    """The shell's _C build result (GPU_CHECK_BUILD_STATUS: ok | failed: ... | skipped: ...)."""
    status = os.environ.get("GPU_CHECK_BUILD_STATUS", "skipped: not run by scripts/gpu_check.sh")
    kind, _, reason = status.partition(":")
    record = {"title": STAGES[1].title, "budget_s": STAGE_BUDGETS["build_C"], "status": kind.strip(),
              "seconds": float(os.environ.get("GPU_CHECK_BUILD_S", "0") or 0)}
    if reason.strip():
        record["reason"] = reason.strip()
    run.results["stages"]["build_C"] = record
    run.save()


# ---------------------------------------------------------------------------------------------
# The table: rendered from gpu_check.json alone (the shell calls --table-only, so it prints last
# even when the stages' process was killed).
# ---------------------------------------------------------------------------------------------

def _f(x, spec=".1f", missing="-"):
    return missing if x is None else format(x, spec)


def _counts(summary) -> str:
    return ", ".join(f"{v} {k}" for k, v in summary.items()) if isinstance(summary, dict) and summary else "-"


def _summary(name: str, d: dict) -> str:
    if name == "env":
        return (f"{d.get('gpu')} cc {d.get('capability')} (dense bf16 peak {_f(d.get('peak_bf16_tflops'), '.0f')} "
                f"TFLOP/s), SM {d.get('clocks_sm')}/{d.get('clocks_max_sm')} MHz, "
                f"mem {d.get('clocks_mem')} MHz, {d.get('power_draw')}/{d.get('power_limit')} W; "
                f"torch {d.get('torch')} CUDA {d.get('cuda')} Triton {d.get('triton')} Python {d.get('python')}")
    if name == "ceilings":
        return (f"cuBLAS bf16 {d.get('n')}^3 {_f(d.get('cublas_bf16_tflops'))} TFLOP/s; "
                f"D2D copy {_f(d.get('copy_gbps_read_plus_write'), '.0f')} GB/s (read+write)")
    if name == "correctness":
        cases = [c for c in d.get("cases", []) if "loss_err" in c]
        worst = lambda key: max(cases, key=lambda c: c[key] / c[key.replace("err", "tol")])  # noqa: E731
        text = f"{d.get('passed')}/{d.get('total')} pass, non-finite: {d.get('non_finite')}"
        for key in ("loss_err", "grad_err"):
            if cases:
                c = worst(key)
                text += f"; worst {key.split('_')[0]} {c[key]:.1e} ({c['dtype']} N={c['n']} tau={c['tau']} {c['path']})"
        return text
    if name in ("loss_32k", "loss_64k"):
        full = d.get("providers", {}).get("fused", {}).get("full", {})
        return (f"fused full {_f(full.get('ms'), '.2f')} ms = {_f(full.get('tflops'))} TFLOP/s, "
                f"{_f(full.get('pct_peak'))}% of this GPU's peak, {_f(full.get('pct_datasheet'))}% of the "
                f"H100/H200 datasheet's {DATASHEET_TFLOPS:.0f}, {_f(full.get('pct_cublas'))}% of cuBLAS; "
                f"x{_f(full.get('x_vs_open_clip'), '.2f')} vs open_clip, "
                f"x{_f(full.get('x_vs_reference'), '.2f')} vs reference")
    if name == "resources":
        rows = [r for r in d.get("kernels", []) if r.get("chosen", True) is not False]
        regs = max((r.get("regs") or 0 for r in rows), default="-")
        return (f"{len(rows)} variants that run (of {len(d.get('kernels', []))}): max regs {regs}, "
                f"spilling {sum(bool(r.get('spills')) for r in rows)}, "
                f"wgmma in {sum(bool(r.get('wgmma')) for r in rows)}")
    if name == "big_262k":
        return (f"{_f(d.get('ms'))} ms = {_f(d.get('tflops'))} TFLOP/s ({_f(d.get('pct_peak'))}% of this GPU's "
                f"peak); extra memory {_f(d.get('extra_mib'))} MiB "
                f"(target < {MEMORY_TARGET_BYTES / 2**20:.0f} MiB); first call {_f(d.get('first_call_s'), '.1f')} s")
    if name == "profile":
        return ", ".join(f"{c.split(' (')[0]} {v['pct']}%" for c, v in d.get("categories", {}).items())
    if name == "e2e":
        return "; ".join(f"{p} {_f(v.get('pairs_per_s'))} pairs/s"
                         + "".join(f" (x{r} {k[len('pairs_per_s_vs_'):]})" for k, r in v.items()
                                   if k.startswith("pairs_per_s_vs_"))
                         for p, v in d.get("providers", {}).items()) or f"pytest: {_counts(d.get('pytest'))}"
    if name == "gpu_tests":
        return (f"{_counts(d.get('result'))} in {len(d.get('collected_files', []))} files"
                + (" (stopped by the time cap)" if d.get("timed_out") else "")
                + f"; collection: {_counts(d.get('collection'))}")
    return ""


def render_table(results: dict) -> str:
    meta, stages = results.get("meta", {}), results.get("stages", {})
    env = stages.get("env", {}).get("data", {})
    out = [f"## gpu_check v2: {env.get('gpu', 'no GPU')}, {meta.get('date')}, git {meta.get('git')}"
           f" ({meta.get('dirty_paths')} paths modified){', DRY RUN' if meta.get('dry_run') else ''}", "",
           "| stage | status | s (budget) | result |", "|---|---|---|---|"]
    for stage in STAGES:
        rec = stages.get(stage.name, {"status": "not run", "budget_s": stage.budget_s})
        status = rec.get("status", "?")
        try:
            text = _summary(stage.name, rec["data"]) if rec.get("data") else ""
        except Exception as e:  # noqa: BLE001: a partial record must not stop the table
            text = f"(summary unavailable: {type(e).__name__})"
        if rec.get("reason"):
            text = f"{status}: {rec['reason']}" + (f"; {text}" if text else "")
        budget = "rest" if stage.name == "gpu_tests" else f"{rec.get('budget_s', stage.budget_s):.0f}"
        out.append(f"| {stage.name} | {status} | {_f(rec.get('seconds'))} ({budget}) | {text.replace('|', '/')} |")
    out += _loss_table(stages) + _kernel_table(stages.get("resources", {}).get("data", {}))
    return "\n".join(out) + "\n"


def _loss_table(stages: dict) -> list[str]:
    rows = []
    for name in ("loss_32k", "loss_64k"):
        d = stages.get(name, {}).get("data", {})
        for prov, modes in d.get("providers", {}).items():
            cells = [f"{_f(modes.get(m, {}).get('ms'), '.2f')} / {_f(modes.get(m, {}).get('tflops'), '.0f')}"
                     for m in MODES]
            full = modes.get("full", {})
            rows.append(f"| {d.get('n')}x{d.get('d')} | {prov} | {' | '.join(cells)} | {_f(full.get('pct_peak'))}"
                        f" / {_f(full.get('pct_datasheet'))} / {_f(full.get('pct_cublas'))}"
                        f" | {_f(full.get('x_vs_open_clip'), '.2f')}"
                        f" / {_f(full.get('x_vs_reference'), '.2f')} |")
    if not rows:
        return []
    header = ("| N x D | provider | fwd ms / TFLOP/s | bwd | full | full % of GPU peak / % of 989 (H100/H200 "
              "datasheet) / % of cuBLAS | full x vs open_clip / ref |")
    return ["", header,
            "|---|---|---|---|---|---|---|", *rows]


def _kernel_table(d: dict) -> list[str]:
    """Launched: the variants that run (the autotuner's picks, every variant of untuned kernels);
    offline: every config. All variants, the candidates included, are in gpu_check.json."""
    rows = [r for r in d.get("kernels") or [] if r.get("chosen", True) is not False]
    out = []
    if rows:
        shown = "what runs" if any("chosen" in r for r in rows) else "every config"
        compilers = sorted({f"Triton {r['triton']}, ptxas {r.get('ptxas')}" for r in rows if r.get("triton")})
        out += ["", f"kernels ({d.get('source')}; shown: {shown}"
                + "".join(f"; compiled with {c}" for c in compilers) + ")",
                "| kernel | dtype | config | regs | spills | smem B | wgmma |", "|---|---|---|---|---|---|---|"]
        seen = set()
        for r in rows:
            cells = (r.get("kernel"), r.get("dtype") or "", r.get("config"), r.get("regs"), r.get("spills"),
                     r.get("shared_bytes"), r.get("wgmma"))
            if cells not in seen:
                seen.add(cells)
                out.append("| " + " | ".join(str(c) for c in cells) + " |")
    autotune = d.get("autotune")
    if isinstance(autotune, dict) and autotune:
        out += ["", "| autotuned key | choice |", "|---|---|", *(f"| {k} | {v} |" for k, v in autotune.items())]
    elif autotune:
        out += ["", f"autotune: {autotune}"]
    return out


def write_table(out: Path) -> str:
    path = out / "gpu_check.json"
    results = json.loads(path.read_text()) if path.exists() else {"meta": {}, "stages": {}}
    table = render_table(results)
    (out / "table.md").write_text(table)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="every stage reports 'skipped' (CI)")
    parser.add_argument("--table-only", action="store_true", help="render and print table.md from gpu_check.json")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        print(write_table(args.out), end="", flush=True)
        return 0
    t0 = float(os.environ.get("GPU_CHECK_T0", time.time()))
    run = Run(args.out, args.dry_run, t0 + float(os.environ.get("GPU_CHECK_DEADLINE_S", "400")))
    if not run.skip_reason and os.environ.get("GPU_CHECK_HAS_GPU", "1") == "0":
        run.skip_reason = "no CUDA device"  # known from the shell: no torch import needed
    if not run.skip_reason:
        import torch  # noqa: F401 (heavy: only on the real path)

        if not torch.cuda.is_available():
            run.skip_reason = "no CUDA device (torch.cuda.is_available() is False)"
    for stage in STAGES:
        if stage.name == "build_C":
            record_build(run)
        else:
            run_stage(run, stage)
    write_table(args.out)
    failed = [s for s, r in run.results["stages"].items()
              if r.get("status") in ("error", "fail", "failed", "interrupted")]
    if failed:
        print(f"stages not ok: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
