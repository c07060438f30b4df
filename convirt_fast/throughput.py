"""How well a run uses its hardware: model FLOPs utilisation against the device's peak.

MFU (as nanoGPT and PaLM define it) = model FLOPs per second achieved / the device's dense peak.
The FLOPs are counted, not estimated from a formula: the trainer runs its first step under
`torch.utils.flop_counter.FlopCounterMode`, which records every matmul and convolution of a real
forward + backward (so frozen layers, which run
no backward, count once, and the text length of that batch is the one counted). Work done outside
aten ops, i.e. the fused Triton loss, is not counted: at batch 256 it is 8 N^2 D = 0.27 GFLOP, against
several TFLOP for a ResNet-50 + BERT-base step (an estimate from the models' published FLOPs).
"""

from __future__ import annotations

import torch

# Dense (no sparsity) datasheet peaks per GPU in TFLOP/s: (bf16/fp16 tensor cores, TF32, plain fp32).
# First match of the name's substring wins, so the more specific names come first.
PEAK_TFLOPS: list[tuple[str, tuple[float, float, float]]] = [
    ("H200 NVL", (835.0, 418.0, 60.0)),
    ("GH200", (989.0, 494.0, 67.0)),
    ("H200", (989.0, 494.0, 67.0)),
    ("H100 PCIe", (756.0, 378.0, 51.0)),
    ("H100 NVL", (835.0, 418.0, 60.0)),
    ("H100", (989.0, 494.0, 67.0)),  # SXM
    ("H800", (989.0, 494.0, 67.0)),
    ("A100", (312.0, 156.0, 19.5)),
    ("A800", (312.0, 156.0, 19.5)),
    ("L40S", (362.0, 183.0, 91.6)),
    ("L40", (181.0, 90.5, 90.5)),
    ("A10G", (70.0, 35.0, 31.2)),
    ("L4", (121.0, 60.0, 30.3)),
    ("A10", (125.0, 62.5, 31.2)),
]


def peak_flops(device: torch.device, compute_dtype: torch.dtype | None) -> float | None:
    """The device's dense peak in FLOP/s for this precision; None on a CPU or an unknown GPU
    (an MFU against a guessed peak would mislead)."""
    if device.type != "cuda":
        return None
    words = torch.cuda.get_device_name(device).replace("-", " ").split()
    for key, (half, tf32, fp32) in PEAK_TFLOPS:
        # whole words in order ("NVIDIA L40" is no L4, "A100-SXM4-80GB" is an A100)
        if any(words[i:i + len(key.split())] == key.split() for i in range(len(words))):
            if compute_dtype in (torch.bfloat16, torch.float16):
                return half * 1e12
            return (tf32 if torch.backends.cuda.matmul.allow_tf32 else fp32) * 1e12
    return None


def utilisation(flops_per_step: float, steps: int, seconds: float, peak: float | None) -> float | None:
    """MFU in [0, 1] of one device: per-rank FLOPs per step x steps / seconds / peak."""
    if peak is None or seconds <= 0 or not flops_per_step:
        return None
    return flops_per_step * steps / seconds / peak


def step_rates(pairs: int, steps: int, seconds: float, flops_per_step: float | None, peak: float | None) -> dict:
    """What a window of steps achieved: pairs per second (all ranks) and this rank's MFU."""
    mfu = utilisation(flops_per_step, steps, seconds, peak)
    return {"pairs_per_s": round(pairs / max(seconds, 1e-9), 1), "mfu": None if mfu is None else round(mfu, 4)}
