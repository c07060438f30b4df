"""The torch augmentation backend: the paper's t_v, batched, on any device.

Crop, resize, flip, rotation, translation and scale are one affine map per sample
(`augment.compose_matrix`) applied by one `grid_sample`; brightness/contrast and a per-sample
Gaussian blur (a grouped separable convolution) follow. It is the fallback where DALI is not
installed and the reference the DALI pipeline is checked against.

The per-sample parameters arrive on the CPU; they go to a CUDA device through pinned memory
with non-blocking copies (`image_decode.host_to_device`), so augmenting a batch never makes the
host wait for the GPU (a pageable copy would wait for the training step queued before it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convirt_fast.data.augment import AugmentParams, AugmentSpec
from convirt_fast.data.image_decode import host_to_device


def _to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Small float32 parameters on the images' device (`host_to_device`: no host wait)."""
    return host_to_device(values.to(torch.float32), device)


def to_unit_float(images: torch.Tensor, max_value: float) -> torch.Tensor:
    """Integer pixels (uint8, or int32 holding 16-bit values) -> float32 in [0, 1]."""
    return images.float().div_(max_value)


def warp(images: torch.Tensor, matrix: torch.Tensor, output_size: int) -> torch.Tensor:
    """Resample (B, 1, H, W) images through (B, 2, 3) output-pixel -> source-pixel maps.

    Pixel coordinates are corner-origin and continuous (pixel i covers [i, i+1)); grid_sample's
    normalised coordinates with align_corners=False use the same edges, so the conversion is
    x_norm = 2 x / W - 1 on both sides. Outside the source: 0.
    """
    b, _, h, w = images.shape
    s = float(output_size)
    to_source_norm = torch.tensor([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]], dtype=torch.float64)
    from_output_norm = torch.tensor([[s / 2, 0, s / 2], [0, s / 2, s / 2], [0, 0, 1]], dtype=torch.float64)
    full = torch.cat([matrix.double(), torch.tensor([[[0, 0, 1]]], dtype=torch.float64).expand(b, 1, 3)], 1)
    theta = _to_device((to_source_norm @ full @ from_output_norm)[:, :2], images.device)
    grid = F.affine_grid(theta, [b, 1, output_size, output_size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def brightness_contrast(images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """out = b * (m + c * (x - m)), m each image's mean (see augment.py)."""
    b = _to_device(brightness, images.device).view(-1, 1, 1, 1)
    c = _to_device(contrast, images.device).view(-1, 1, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return b * (mean + c * (images - mean))


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B, K) normalised 1-D Gaussian kernels (torchvision's formula); sigma 0 -> identity."""
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    safe = sigma.double().clamp(min=1e-6)[:, None]
    kernel = torch.exp(-0.5 * (x[None, :] / safe) ** 2)
    return kernel / kernel.sum(1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-sample separable blur with reflect padding: one grouped convolution per axis."""
    b, c, h, w = images.shape
    blurred = sigma > 0
    if not bool(blurred.any()):
        return images
    kernel = _to_device(gaussian_kernels(sigma.cpu(), kernel_size), images.device)  # (B, K)
    pad = kernel_size // 2
    if pad >= min(h, w):
        raise ValueError(f"blur kernel {kernel_size} too large for {h}x{w} images")
    x = images.reshape(1, b * c, h, w)
    weight = kernel.repeat_interleave(c, 0)
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), weight.view(b * c, 1, 1, kernel_size), groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), weight.view(b * c, 1, kernel_size, 1), groups=b * c)
    return x.view(b, c, h, w)


def augment_batch(images: torch.Tensor, params: AugmentParams, spec: AugmentSpec, *, normalize: bool = True) -> torch.Tensor:
    """Training transform of a batch: (B, 1, H, W) float in [0, 1] -> (B, 1, S, S)."""
    out = warp(images, params.matrix, spec.output_size)
    out = brightness_contrast(out, params.brightness, params.contrast)
    out = gaussian_blur(out, params.blur_sigma, spec.blur_kernel_size)
    out = out.clamp_(0, 1)
    return (out - spec.mean) / spec.std if normalize else out


def eval_batch(images: torch.Tensor, matrix: torch.Tensor, spec: AugmentSpec, *, normalize: bool = True) -> torch.Tensor:
    """Evaluation transform (pad to square, resize): `augment.eval_matrix` through `warp`."""
    out = warp(images, matrix, spec.output_size).clamp_(0, 1)
    return (out - spec.mean) / spec.std if normalize else out
