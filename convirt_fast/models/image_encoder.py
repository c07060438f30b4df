"""Image encoder f_v: a torchvision ResNet with a one-channel stem and no classifier.

The module *is* torchvision's ResNet (conv1 swapped for a one-channel convolution, fc for
`nn.Identity`), so its state-dict keys are torchvision's minus `fc.*`: exported weights load into
`torchvision.models.<name>` after `expand_stem` (see export.py). Output: (B, C) globally
average-pooled features, C = 512 for resnet18/34 and 2048 for resnet50 and wider.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models
from torchvision.models.resnet import ResNet


def build_image_encoder(name: str = "resnet50", in_channels: int = 1) -> ResNet:
    """A randomly initialised torchvision ResNet `name` (never downloads weights).

    Chest X-rays are grayscale and stay one channel until the model, so the stem takes
    `in_channels` (1) directly instead of replicating the image to RGB three times over."""
    builder = getattr(models, name, None)
    if builder is None or not callable(builder):
        raise ValueError(f"model.image_encoder={name!r} is not a torchvision model builder (e.g. resnet18, resnet50)")
    encoder = builder(weights=None)
    if not isinstance(encoder, ResNet):
        raise ValueError(f"model.image_encoder={name!r} is a {type(encoder).__name__}, not a torchvision ResNet")
    old = encoder.conv1
    encoder.conv1 = nn.Conv2d(
        in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride, padding=old.padding, bias=False
    )
    # Same init as torchvision gives its stem, so a one-channel model starts like an RGB one.
    nn.init.kaiming_normal_(encoder.conv1.weight, mode="fan_out", nonlinearity="relu")
    encoder.fc = nn.Identity()
    encoder.convirt_arch = name  # read by the exporter to record the architecture in the file
    return encoder


def image_feature_dim(encoder: ResNet) -> int:
    """Width of the pooled features (the input width torchvision's fc had)."""
    last_stage = encoder.layer4[-1]
    last_bn = getattr(last_stage, "bn3", None) or last_stage.bn2  # Bottleneck vs BasicBlock
    return int(last_bn.num_features)


@torch.no_grad()
def stem_weight_to_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """conv1 weights (O, C, k, k) converted to `in_channels` inputs, preserving the response to a
    gray image: C -> 1 sums over the channels (RGB) (a gray image replicated to RGB gives the same output);
    1 -> C repeats the kernel divided by C (the inverse). Other conversions are refused."""
    have = weight.shape[1]
    if have == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if have == 1:
        return weight.repeat(1, in_channels, 1, 1) / in_channels
    raise ValueError(f"cannot convert a {have}-channel stem to {in_channels} channels")
