"""scripts/gpu_check.sh v2 cannot rot between GPU runs: its dry run and its no-CUDA run exit 0, every
stage says it skipped, the table prints last and $OUT holds at most 8 files; and the real path's
stage code runs on a CPU at toy sizes (torch backend), so an API slip shows here, not on the GPU."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _load_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load_module()


def _run_script(tmp_path, *args, **env):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env})
    return proc, out


def _check_all_skipped(proc, out, reason):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stages = json.loads((out / "gpu_check.json").read_text())["stages"]
    assert list(stages) == [s.name for s in gpu_check.STAGES]
    for name, record in stages.items():
        assert record["status"] == "skipped", (name, record)
        assert reason in record["reason"], (name, record)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    table = (out / "table.md").read_text()
    assert "| stage | status |" in proc.stdout and table.strip().splitlines()[-1] == lines[-1]  # printed last
    for stage in gpu_check.STAGES:
        assert f"| {stage.name} | skipped |" in table
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() for f in files), files  # flat, as the device tool fetches
    assert {"env.txt", "run.log", "gpu_check.json", "table.md"} <= {f.name for f in files}


def test_dry_run_skips_every_stage(tmp_path):
    t0 = time.monotonic()
    proc, out = _run_script(tmp_path, "--dry-run")
    _check_all_skipped(proc, out, "dry run")
    assert time.monotonic() - t0 < 30  # no torch import, no build, no pytest


def test_without_cuda_skips_every_stage_and_builds_nothing(tmp_path):
    proc, out = _run_script(tmp_path, CUDA_VISIBLE_DEVICES="")
    _check_all_skipped(proc, out, "no CUDA device")
    assert "cmake" not in proc.stdout.lower().split("== build_c", 1)[1].split("==", 1)[0]


def test_unknown_argument_is_refused(tmp_path):
    proc, _ = _run_script(tmp_path, "--gpu")
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_pytest_summary_and_kernel_categories():
    assert gpu_check.pytest_summary("x\n1 failed, 47 passed, 1 skipped, 72 deselected, 14 warnings in 50.67s\n") == {
        "failed": 1, "passed": 47, "skipped": 1, "deselected": 72, "warnings": 14}
    assert gpu_check.pytest_summary("6 errors in 1.0s") == {"errors": 6}
    assert gpu_check.pytest_summary("49/179 tests collected (130 deselected), 1 error in 15.25s") == {
        "collected": 49, "deselected": 130, "errors": 1}
    assert gpu_check.pytest_summary("no summary") == {}
    assert gpu_check.classify_kernel("_lse_fwd_kernel") == "LSE (forward GEMM pass)"
    assert gpu_check.classify_kernel("_merge_kernel") == "merge of partials"  # kernels/triton_loss.py's names
    assert gpu_check.classify_kernel("_prologue_kernel") == "prologue/epilogue"
    assert gpu_check.classify_kernel("_grad_strip_kernel") == "gradient strips"
    assert gpu_check.classify_kernel("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT") == "GEMMs (cuBLAS)"
    assert gpu_check.classify_kernel("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n") == "GEMMs (cuBLAS)"
    assert gpu_check.classify_kernel("_input_grad_kernel") == "prologue/epilogue"
    assert gpu_check.classify_kernel("void at::native::vectorized_elementwise_kernel") == "other"


@pytest.fixture
def cpu_stages(monkeypatch):
    """The module set to run its stages on a CPU: torch backend, toy sizes, a fake offline report."""
    pytest.importorskip("torch")
    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_check, "BACKEND", "torch")
    monkeypatch.setattr(gpu_check, "SIZES", {
        "ceiling_n": 64, "copy_bytes": 1 << 16, "correctness_n": (33, 64), "correctness_d": 24,
        "loss_32k": (96, 32), "loss_64k": (64, 48), "big_n": 128, "big_d": 32})
    monkeypatch.setattr(gpu_check, "api_sm90a_report", lambda: [
        {"kernel": "_lse_fwd_kernel", "config": "128x64x64 w8 s3", "regs": 168, "spills": 0,
         "shared_bytes": 98304, "wgmma": True}])
    return gpu_check


def test_real_stages_run_on_cpu_at_toy_sizes(cpu_stages, tmp_path):
    run = cpu_stages.Run(tmp_path, dry_run=False, deadline=time.time() + 600)
    cpu_stages.record_build(run)
    names = ["env", "ceilings", "correctness", "loss_32k", "loss_64k", "resources", "big_262k", "profile"]
    for stage in cpu_stages.STAGES:
        if stage.name in names:
            cpu_stages.run_stage(run, stage)
    stages = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]
    for name in names:
        assert stages[name]["status"] in ("ok", "fail"), (name, stages[name])  # ran through: no error
    correctness = stages["correctness"]["data"]
    assert correctness["total"] == 2 * 2 * 2 * 2 and correctness["non_finite"] == 0
    # the torch path in fp32 is as exact as fp64 allows: these cases must pass
    assert all(c["status"] == "pass" for c in correctness["cases"] if c["dtype"] == "float32")
    full = stages["loss_32k"]["data"]["providers"]["fused"]["full"]
    assert full["ms"] > 0 and "x_vs_open_clip" in full and "x_vs_reference" in full
    # FLOP counts from benchmarks/bench_loss.py (defined once there); no peak is known for a CPU
    assert cpu_stages.bench_loss().FLOPS == {"forward": 2, "backward": 6, "full": 8}
    assert full["pct_peak"] is None and stages["big_262k"]["data"]["pct_peak"] is None
    assert stages["resources"]["data"]["kernels"][0]["regs"] == 168
    assert (tmp_path / "profile.txt").read_text().startswith("fused loss, forward + backward")
    table = cpu_stages.write_table(tmp_path)
    assert "summary unavailable" not in table and "| loss_32k | ok |" in table
    assert "| 96x32 | fused |" in table and "| _lse_fwd_kernel |" in table


def test_launched_kernel_resources_read_through_the_autotuner():
    """The JIT caches as Triton 3.x lays them out (device -> (kernel_cache, ...)), behind an Autotuner."""
    from types import SimpleNamespace as NS

    def compiled(block_m, warps, spills):
        return NS(n_regs=168, n_spills=spills, asm={"ptx": "wgmma.mma_async.sync"},
                  metadata=NS(num_warps=warps, num_stages=3, shared=98304),
                  src=NS(fn=NS(arg_names=["X", "Y", "BLOCK_M", "BLOCK_N"]), signature={"X": "*bf16", "Y": "*bf16"},
                         constants={(2,): block_m, (3,): 64}))
    jit = NS(device_caches={0: ({"a": compiled(128, 8, 0), "b": compiled(64, 4, 12)}, {}, "target", "backend", None)})
    module = NS(_lse_fwd_kernel=NS(fn=NS(fn=jit), configs=[1, 2]), _scale_rows_kernel=NS(device_caches={}), EPS=1e-12)
    rows = gpu_check.launched_kernels(module)
    assert [(r["kernel"], r["config"], r["dtype"], r["wgmma"]) for r in rows] == [
        ("_lse_fwd_kernel", "BLOCK_M=128 BLOCK_N=64 warps=8 stages=3", "*bf16", True),
        ("_lse_fwd_kernel", "BLOCK_M=64 BLOCK_N=64 warps=4 stages=3", "*bf16", True)]
    gpu_check.mark_chosen(rows, {"lse_fwd D=512 n_bucket=32768 bfloat16": "BLOCK_M=128 BLOCK_N=64 warps=8 stages=3"})
    assert [r["chosen"] for r in rows] == [True, False]  # the spilling candidate does not run
    table = "\n".join(gpu_check._kernel_table({"kernels": rows, "source": "launched", "autotune": {"k": "v"}}))
    assert "BLOCK_M=128" in table and "BLOCK_M=64" not in table and "| k | v |" in table
    gpu_check.mark_chosen(rows, {"lse_fwd": "BM=128 BN=64"})  # a format not understood: show all, hide none
    assert [r["chosen"] for r in rows] == [None, None]


def test_stage_runner_records_errors_budgets_and_interrupts(tmp_path):
    run = gpu_check.Run(tmp_path, dry_run=False, deadline=time.time() + 60)

    def partial_then_error(run, data):
        data["measured"] = 1.5
        raise ValueError("boom")

    def interrupted(run, data):
        raise KeyboardInterrupt

    stages = [gpu_check.Stage("a", 10, partial_then_error, "a"), gpu_check.Stage("big", 100, lambda r, d: None, "b"),
              gpu_check.Stage("c", 10, interrupted, "c"), gpu_check.Stage("d", 10, lambda r, d: None, "d")]
    for stage in stages:
        gpu_check.run_stage(run, stage)
    got = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]
    assert got["a"]["status"] == "error" and "boom" in got["a"]["reason"] and got["a"]["data"] == {"measured": 1.5}
    # 60 s left, 40 s kept for the GPU tests: a 100 s stage does not start
    assert got["big"]["status"] == "skipped" and "time budget" in got["big"]["reason"]
    assert got["c"]["status"] == "interrupted" and got["d"]["status"] == "skipped"
