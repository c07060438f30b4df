"""Data parallelism applied from outside the model: FSDP2 (`fully_shard`) or DDP.

FSDP2 shards each ResNet stage and each BERT layer as its own group, then the root. Under bf16
the parameters are gathered in bf16 and gradients reduced in fp32; BatchNorm modules get their
own group whose policy keeps them in fp32 (running statistics and the normalisation of small
batch variances lose too much in bf16).
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
    fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            fully_shard(module, mp_policy=fp32)
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
