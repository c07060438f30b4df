"""Compile every autotune config of the loss's GEMM kernels for sm_90a (H100/H200) on any machine.

    python -m convirt_fast.kernels.compile_report          # a table; --json for the records

GPU time is rare here, so what can be known without one is checked on a CPU: each config of
`triton_loss.SHIPPED_CONFIGS` (the autotune sets) is compiled with Triton's own compiler for a CUDA target
(`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`), its PTX assembled by
Triton's bundled ptxas with -v for the register count and spills, and the PTX searched for
`wgmma` (Hopper's warpgroup tensor-core instruction: without it a GEMM runs at a fraction of peak).
Used by tests/test_kernel_compile.py (fails on spills or a missing wgmma), benchmarks/bench_loss.py
(the numbers go into its JSON) and the GPU check script.

Each kernel is compiled for the specialisations a real launch at D = 512 produces (`VARIANTS`):
full tiles (EVEN_*) as at large N, masked tiles as at odd N, and the forward's
several-row-blocks-per-program form (MULTI) of N > 65,536; for bf16 inputs (fp16 compiles alike)
with every config of the set, and for fp32 inputs with theirs (`triton_loss.shipped_configs`) in
both precisions torch may ask for: TF32 (wgmma) and IEEE fp32 (no tensor-core instruction exists
for it, so no wgmma is required there).

The compiler is this machine's Triton and its bundled ptxas, whose versions every record carries
(`triton`, `ptxas`; the table's first line): another Triton release (the GPU machine's may differ)
can allocate registers differently, so a clean report holds for those versions.

Triton runs its kernels through an interpreter when TRITON_INTERPRET=1 (the CPU tests), where
@triton.jit gives no compilable function: then the report runs in a subprocess without it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from functools import lru_cache

import triton

TARGET = ("cuda", 90, 32)  # sm_90a: Triton adds the "a" (wgmma, TMA) for capability 9.0
D = 512
# name -> (Triton pointer type, torch dtype, tl.dot precision, BLOCK_K, wgmma required)
DTYPES = {
    "bf16": ("bf16", "bfloat16", "ieee", 64, True),
    "fp32-tf32": ("fp32", "float32", "tf32", 32, True),
    "fp32-ieee": ("fp32", "float32", "ieee", 32, False),
}
ELT_STRIDE = {"sxm": D, "sym": D, "shm": 4096}  # row strides of contiguous (N, 512) inputs, H
# name -> (kernel, constexpr values besides the tile config)
VARIANTS = {
    "lse_fwd": ("_lse_fwd_kernel", dict(EVEN_M=True, EVEN_N=True, EVEN_K=True, MULTI=False)),
    "lse_fwd_multi": ("_lse_fwd_kernel", dict(EVEN_M=True, EVEN_N=True, EVEN_K=True, MULTI=True)),
    "lse_fwd_masked": ("_lse_fwd_kernel", dict(EVEN_M=False, EVEN_N=False, EVEN_K=True, MULTI=False)),
    "grad_strip": ("_grad_strip_kernel", dict(EVEN_M=True, EVEN_N=True, EVEN_K=True)),
    "grad_strip_masked": ("_grad_strip_kernel", dict(EVEN_M=False, EVEN_N=False, EVEN_K=True)),
}


def ptxas_path() -> str | None:
    """Triton's bundled ptxas (it also compiles the cubin), or None where the wheel lacks it."""
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return path if os.access(path, os.X_OK) else None


@lru_cache(maxsize=None)
def ptxas_version(ptxas: str) -> str | None:
    """'12.9.86' from `ptxas --version` ('Cuda compilation tools, release 12.9, V12.9.86'), else None."""
    try:
        out = subprocess.run([ptxas, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release [\d.]+, V([\d.]+)", out)
    return found.group(1) if found else None


def _jit_function(kernel):
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn  # Autotuner -> Heuristics -> JITFunction
    return kernel


def _signature(fn, constexprs: dict, elt: str) -> tuple[dict, dict]:
    """Types of fn's arguments as a launch at D = 512 with `elt` inputs sees them, and alignment
    attributes."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("X", "Y", "H"):
            sig[name] = f"*{elt}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name.isupper() and name not in ("M", "N", "D"):  # the other pointers: fp32 statistics and scratch
            sig[name] = "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("lam", "h_scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name == "D" or name in ELT_STRIDE:  # specialised: multiples of 16
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def _ptxas_usage(ptx: str, ptxas: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", src, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True)
    text = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", text)
    stores = re.search(r"(\d+) bytes spill stores", text)
    loads = re.search(r"(\d+) bytes spill loads", text)
    return {"regs": int(regs.group(1)) if regs else None,
            "spills": (int(stores.group(1)) if stores else 0) + (int(loads.group(1)) if loads else 0)}


def _compile_one(kernel, config, constexprs: dict, dtype: str, ptxas: str) -> dict:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import triton_loss

    elt, _, precision, block_k, _ = DTYPES[dtype]
    fn = _jit_function(kernel)
    const = {**config.kwargs, **constexprs, "BLOCK_K": block_k, "UPCAST": False, "PRECISION": precision,
             "sxd": 1, "syd": 1}
    if "TILES" in fn.arg_names:
        const["TILES"] = triton_loss.STRIP_TILES
    sig, attrs = _signature(fn, const, elt)
    try:
        src = ASTSource(fn, sig, constexprs=const, attrs=attrs)
    except TypeError as e:  # ASTSource's arguments as of Triton 3.3 - 3.8
        raise RuntimeError(f"Triton {triton.__version__}: unknown ASTSource signature ({e})") from e
    compiled = triton.compile(src, target=GPUTarget(*TARGET),
                              options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    ptx = compiled.asm["ptx"]
    return {**_ptxas_usage(ptx, ptxas), "shared_bytes": int(compiled.metadata.shared),
            "wgmma": "wgmma.mma_async" in ptx}


def _report_here() -> list[dict]:
    import torch

    from . import triton_loss

    ptxas = ptxas_path()
    if ptxas is None:
        raise RuntimeError("Triton's bundled ptxas is missing: cannot compile for sm_90a")
    versions = {"triton": triton.__version__, "ptxas": ptxas_version(ptxas)}
    rows = []
    for dtype, (_, torch_dtype, _, _, needs_wgmma) in DTYPES.items():
        for name, (kernel_name, constexprs) in VARIANTS.items():
            kernel = getattr(triton_loss, kernel_name)
            for config in triton_loss.shipped_configs(kernel_name, getattr(torch, torch_dtype)):
                rows.append({"kernel": name, "dtype": dtype, "config": triton_loss.config_str(config),
                             "gemm": needs_wgmma, **_compile_one(kernel, config, constexprs, dtype, ptxas),
                             **versions})
    return rows


def sm90a_report() -> list[dict]:
    """One record per (kernel variant, input dtype, config): kernel, dtype, config, regs, spills
    (bytes stored + loaded), shared_bytes, wgmma (bool), gemm (whether wgmma is required), and the
    compilers: triton (version), ptxas (version, None if unreadable). Runs in a subprocess when
    this process interprets Triton (TRITON_INTERPRET=1). Raises when ptxas is missing."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return _report_here()
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run([sys.executable, "-m", "convirt_fast.kernels.compile_report", "--json"],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"compile_report subprocess failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout)


def problems(rows: list[dict]) -> list[str]:
    """What makes a config unfit: register spills, or a GEMM kernel without wgmma."""
    bad = []
    for r in rows:
        where = f"{r['kernel']} {r.get('dtype', '')} [{r['config']}]"
        if r["spills"]:
            bad.append(f"{where}: {r['spills']} bytes of register spills")
        if r["gemm"] and not r["wgmma"]:
            bad.append(f"{where}: no wgmma in the PTX")
    return bad


def format_table(rows: list[dict]) -> str:
    compilers = sorted({(r.get("triton"), r.get("ptxas")) for r in rows}, key=str)
    lines = [f"sm_90a, compiled with Triton {t} and ptxas {p}" for t, p in compilers]
    lines += [f"{'kernel':<18} {'dtype':<10} {'config':<42} {'regs':>5} {'spills':>6} {'shared':>7} wgmma"]
    for r in rows:
        lines.append(f"{r['kernel']:<18} {r.get('dtype', ''):<10} {r['config']:<42} {r['regs']!s:>5} "
                     f"{r['spills']:>6} {r['shared_bytes']:>7} {r['wgmma']}")
    return "\n".join(lines)


if __name__ == "__main__":
    report = sm90a_report()
    print(json.dumps(report) if "--json" in sys.argv else format_table(report))
