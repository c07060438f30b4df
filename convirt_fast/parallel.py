"""Data parallelism applied from outside the model: FSDP2 (`fully_shard`) or DDP.

FSDP2 units are per block, not per layer: each ResNet stage, each BERT layer, the root (stem,
embeddings, projections), and one unit holding every BatchNorm. Under bf16 the blocks' parameters
are gathered in bf16 and gradients reduced in fp32. The BatchNorm unit keeps its parameters in
fp32 (the affine parameters of small-variance channels lose too much in bf16; running statistics
are buffers, never cast): all of ResNet-50's 53 BatchNorms are ~0.2% of its parameters, gathered
in one all-gather per step and kept until the backward is done, where one unit per BatchNorm
would cost 53 tiny all-gathers in the forward and 53 more in the backward.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from convirt_fast.distributed import DistInfo


def resolve_parallel(kind: str, info: DistInfo) -> str:
    if kind == "auto":
        return "ddp" if info.distributed else "none"
    if kind in ("ddp", "fsdp") and not info.distributed:
        return "none"  # one process: nothing to shard or replicate
    return kind


def apply_fsdp(model: nn.Module, param_dtype: torch.dtype | None) -> nn.Module:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        # Inputs are not cast: under autocast a BatchNorm takes the bf16 convolution output with
        # fp32 parameters (mixed-precision batch norm), as it would without FSDP.
        fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)
        fully_shard(norms, mp_policy=fp32, reshard_after_forward=False)
    image = model.image_encoder
    for name in ("layer1", "layer2", "layer3", "layer4"):
        fully_shard(getattr(image, name), mp_policy=policy)
    text_layers = getattr(getattr(model.text_encoder, "bert", model.text_encoder), "encoder", None)
    for layer in getattr(text_layers, "layer", []):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def wrap_model(model: nn.Module, kind: str, info: DistInfo, param_dtype: torch.dtype | None) -> nn.Module:
    if kind == "fsdp":
        return apply_fsdp(model, param_dtype)
    if kind == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        # Frozen text layers have no gradients: find_unused_parameters is not needed for them.
        return DistributedDataParallel(model, device_ids=ids)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on accumulation micro-steps."""
    if enabled:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield
