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


def parallelize(model: nn.Module, train, info: DistInfo) -> tuple[nn.Module, str, torch.dtype | None]:
    """The model on this rank's device, wrapped for train.parallel and train.precision (and
    compiled with train.compile): (the module to train, the parallelism used, the autocast dtype)."""
    model.to(info.device)
    if info.device.type == "cuda":
        # Fixed input sizes: let cuDNN pick the fastest convolution algorithms once.
        torch.backends.cudnn.benchmark = True
    use_bf16 = train.precision == "bf16" or (train.precision == "auto" and info.device.type == "cuda")
    autocast_dtype = torch.bfloat16 if use_bf16 else None
    kind = resolve_parallel(train.parallel, info)
    wrapped = wrap_model(model, kind, info, autocast_dtype)
    if train.compile:
        model.image_encoder.compile()
        model.text_encoder.compile()
    return wrapped, kind, autocast_dtype


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


def average_outside_gradients(params, world_size: int) -> None:
    """All-reduce (mean) the gradients of parameters that live outside DDP/FSDP (the loss's
    learnable temperature): a device-side collective, no host wait."""
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size


def nonfinite_gradients(optimizer: torch.optim.Optimizer, grad_clip: float | None) -> torch.Tensor:
    """1.0 when some gradient is inf/nan (a finite loss can still overflow in the backward), as
    a device tensor, from the global gradient norm (clipped to `grad_clip` when set); the same on
    every rank (under FSDP2 the norm over sharded gradients is an all-reduce)."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grad_clip:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return (~torch.isfinite(norm)).float()
