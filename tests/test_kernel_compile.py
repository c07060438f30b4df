"""Every shipped autotune config of the loss's GEMM kernels compiles for sm_90a (H100/H200) without
register spills and with wgmma, checked on a CPU with Triton's compiler and bundled ptxas
(`convirt_fast.kernels.compile_report`): the first GPU run autotunes over exactly these configs,
and a config that spills or misses the tensor-core instruction would waste that run's time.

It compiles with the Triton installed here (3.8 on the development machines; the GPU machine has
3.6), whose version and ptxas's are in every record and the printed table: a clean result holds
for these compilers, and the GPU check's "resources" stage reads what the GPU's Triton compiled."""

import pytest
import torch

triton = pytest.importorskip("triton")


@pytest.fixture(scope="module")
def report():
    from convirt_fast.kernels import compile_report

    if compile_report.ptxas_path() is None:
        pytest.skip("Triton's bundled ptxas is absent: cannot compile for sm_90a here")
    return compile_report.sm90a_report()


def test_every_shipped_config_compiles_for_sm90a_without_spills(report):
    from convirt_fast.kernels import compile_report, triton_loss

    print("\n" + compile_report.format_table(report))  # which configs were compiled (pytest -s / -rA)
    expected = {(variant, dtype, triton_loss.config_str(c))
                for dtype, (_, torch_dtype, *_) in compile_report.DTYPES.items()
                for variant, (kernel, _) in compile_report.VARIANTS.items()
                for c in triton_loss.shipped_configs(kernel, getattr(torch, torch_dtype))}
    assert {(r["kernel"], r["dtype"], r["config"]) for r in report} == expected
    assert {r["triton"] for r in report} == {triton.__version__}  # what compiled it, on record
    assert {r["ptxas"] for r in report} == {compile_report.ptxas_version(compile_report.ptxas_path())}
    assert compile_report.format_table(report).startswith(f"sm_90a, compiled with Triton {triton.__version__}")
    assert len([r for r in report if r["dtype"] == "bf16"]) == 5 * 6  # every config of both sets
    assert all(r["regs"] is not None and r["regs"] <= 255 for r in report)
    assert all(r["shared_bytes"] <= 227 * 1024 for r in report), "over the H100/H200 shared memory per block"
    bad = compile_report.problems(report)
    assert not bad, "\n".join(bad)


def test_problems_flags_spills_and_missing_wgmma():
    """The checker itself: a spilling config and a GEMM without wgmma are reported."""
    from convirt_fast.kernels.compile_report import problems

    ok = {"kernel": "lse_fwd", "dtype": "bf16", "config": "c", "regs": 200, "spills": 0, "shared_bytes": 0,
          "wgmma": True, "gemm": True}
    assert problems([ok]) == []
    assert len(problems([{**ok, "spills": 8}])) == 1
    assert len(problems([{**ok, "wgmma": False}])) == 1
    assert problems([{**ok, "wgmma": False, "gemm": False}]) == []


def test_autotune_sets_are_small_and_pruned_for_small_n():
    """First-run autotuning time counts against the GPU check: <= 8 configs per kernel, the large
    tiles among them, tiny problems try only the smallest tile and small ones at most three."""
    from convirt_fast.kernels import triton_loss

    for configs in triton_loss.SHIPPED_CONFIGS.values():
        assert 2 <= len(configs) <= 8
        assert any(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] >= 128 * 128 and c.num_warps == 8 for c in configs)
    x16, x32 = torch.empty(1, dtype=torch.bfloat16), torch.empty(1)
    small = triton_loss._prune(triton_loss.FWD_CONFIGS, {"X": x16, "M": 32, "N": 32, "n_bucket": 32})
    assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in small] == [(64, 64)]
    strip = triton_loss._prune(triton_loss.STRIP_CONFIGS, {"X": x16, "M": 100, "col0": 0, "col1": 100})
    assert max(c.kwargs["BLOCK_M"] for c in strip) == 128 and max(c.kwargs["BLOCK_N"] for c in strip) == 128
    mid = triton_loss._prune(triton_loss.FWD_CONFIGS, {"X": x16, "M": 1000, "N": 1000, "n_bucket": 1024})
    assert 1 < len(mid) <= 3 and all(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 128 * 64 for c in mid)
    big = triton_loss._prune(triton_loss.FWD_CONFIGS, {"X": x16, "M": 32768, "N": 32768, "n_bucket": 16384})
    assert big == [c for c in triton_loss.FWD_CONFIGS if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] > 64 * 64]
    assert any(c.kwargs["BLOCK_M"] == c.kwargs["BLOCK_N"] == 128 for c in big)
    fp32 = triton_loss._prune(triton_loss.FWD_CONFIGS, {"X": x32, "M": 32768, "N": 32768, "n_bucket": 16384})
    assert fp32 == triton_loss.shipped_configs("_lse_fwd_kernel", torch.float32) and len(fp32) == 1


def test_autotune_choices_reads_the_autotuner_cache():
    """autotune_choices() reports, per kernel and key, the config in the Autotuner's cache (filled
    on a GPU; here one entry is planted and removed)."""
    from convirt_fast.kernels import triton_loss

    kernel = triton_loss._lse_fwd_kernel
    key = (512, 16384, "torch.bfloat16", "torch.bfloat16")
    kernel.cache[key] = triton_loss.FWD_CONFIGS[0]
    try:
        choices = triton_loss.autotune_choices()
    finally:
        del kernel.cache[key]
    assert choices["lse_fwd D=512 n_bucket=16384 bfloat16"] == "BLOCK_M=128 BLOCK_N=128 warps=8 stages=3"
