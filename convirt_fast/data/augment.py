"""The paper's image transformation t_v: its specification and per-sample random parameters.

Both backends (`augment_torch`, `augment_dali`) apply the same parameters, drawn here, so that
they differ only in interpolation details and the DALI pipeline can be checked against torch
sample by sample, not only in distribution.

PAPER.md, "Image transformation t_v" (torchvision, in this order): random crop with area ratio
in [0.6, 1.0]; horizontal flip p = 0.5; affine with rotation in [-20, 20] degrees, translation
up to 0.1 of width/height, scale in [0.95, 1.05]; brightness and contrast factors in [0.6, 1.4];
Gaussian blur with sigma in [0.1, 3.0]; output 224 x 224.

Choices where the paper is silent (all overridable):
- Crop aspect ratio in [3/4, 4/3], log-uniform, as torchvision's RandomResizedCrop (its 10
  attempts and centre-crop fallback included).
- Crop, resize to the output size, flip and affine compose into ONE affine map from output
  pixels to source pixels, applied with a single bilinear resampling (instead of three
  resamplings in torchvision). Pixels mapped outside the source are 0 (black), as
  torchvision's RandomAffine fill.
- Brightness and contrast: out = b * (m + c * (x - m)), m the image mean; this is torchvision's
  brightness-then-contrast (ColorJitter with that order) without the intermediate clamp, and
  exactly DALI's brightness_contrast with contrast_center = m. Both always applied.
- Gaussian blur applied with probability 0.5 (as SimCLR, whose augmentations these follow);
  kernel size 2 * ceil(3 * sigma_max) + 1 = 19 px at 224 px, reflect padding, as torchvision.
- The result is clamped to [0, 1], then normalised with a grayscale ImageNet mean/std.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

# torchvision's ImageNet RGB statistics, weighted to gray (0.299 R + 0.587 G + 0.114 B).
GRAY_MEAN = 0.449
GRAY_STD = 0.226
# RandomResizedCrop's number of tries before it falls back to a centre crop.
_CROP_ATTEMPTS = 10


@dataclass
class AugmentSpec:
    """Parameters of the training transformation (defaults: PAPER.md)."""

    output_size: int = 224
    """Side of the square output, pixels."""
    crop_area: tuple[float, float] = (0.6, 1.0)
    """Crop area as a fraction of the image area."""
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Crop aspect ratio range (width / height), sampled log-uniformly (paper: not stated)."""
    flip_p: float = 0.5
    """Probability of a horizontal flip."""
    rotation_deg: float = 20.0
    """Rotation uniform in [-rotation_deg, rotation_deg] degrees."""
    translate: float = 0.1
    """Translation uniform in [-translate, translate] of the output width / height."""
    scale: tuple[float, float] = (0.95, 1.05)
    """Affine scale range."""
    brightness: tuple[float, float] = (0.6, 1.4)
    """Brightness factor range."""
    contrast: tuple[float, float] = (0.6, 1.4)
    """Contrast factor range."""
    blur_sigma: tuple[float, float] = (0.1, 3.0)
    """Gaussian blur sigma range, pixels of the output."""
    blur_p: float = 0.5
    """Probability of blurring (paper: not stated)."""
    mean: float = GRAY_MEAN
    """Normalisation mean (applied last)."""
    std: float = GRAY_STD
    """Normalisation standard deviation."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # from a config file
                value = tuple(value)
                setattr(self, f.name, value)
            if isinstance(value, tuple) and (len(value) != 2 or value[0] > value[1]):
                raise ValueError(f"augment.{f.name} must be a (low, high) pair with low <= high, got {value}")
        if not 0 < self.crop_area[0] <= self.crop_area[1] <= 1:
            raise ValueError(f"augment.crop_area must lie in (0, 1], got {self.crop_area}")
        for name in ("flip_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augment.{name} must be a probability, got {getattr(self, name)}")
        if self.output_size < 1 or self.std <= 0 or self.blur_sigma[0] <= 0:
            raise ValueError("augment.output_size and augment.std must be positive, blur sigmas > 0")

    @property
    def blur_kernel_size(self) -> int:
        """Odd kernel covering +-3 sigma at the largest sigma."""
        return 2 * math.ceil(3 * self.blur_sigma[1]) + 1

    @classmethod
    def identity(cls, output_size: int = 224) -> "AugmentSpec":
        """No randomness: the largest centred square crop, resized (for tests and ablations)."""
        return cls(output_size=output_size, crop_area=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0,
                   rotation_deg=0.0, translate=0.0, scale=(1.0, 1.0), brightness=(1.0, 1.0),
                   contrast=(1.0, 1.0), blur_p=0.0)


@dataclass
class AugmentParams:
    """One batch's random parameters; tensors on the CPU, float64 for exact composition."""

    matrix: torch.Tensor
    """(B, 2, 3): output pixel (x, y, 1) -> source pixel, pixel centres at +0.5 (DALI's and
    OpenCV's warp convention with corner-origin coordinates)."""
    brightness: torch.Tensor  # (B,)
    contrast: torch.Tensor  # (B,)
    blur_sigma: torch.Tensor  # (B,); 0 = no blur
    # The drawn values, kept for the distribution tests:
    crop: torch.Tensor  # (B, 4): top, left, height, width in source pixels
    flip: torch.Tensor  # (B,) bool
    angle: torch.Tensor  # (B,) degrees
    translation: torch.Tensor  # (B, 2) output pixels
    affine_scale: torch.Tensor  # (B,)


def _uniform(low: float, high: float, n: int, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def sample_crops(heights: torch.Tensor, widths: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop.get_params, batched: (B, 4) top, left, height, width (integers)."""
    n = heights.numel()
    h = heights.double()[:, None]
    w = widths.double()[:, None]
    area = h * w * _uniform(*spec.crop_area, n * _CROP_ATTEMPTS, generator).view(n, _CROP_ATTEMPTS)
    log_ratio = _uniform(math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1]), n * _CROP_ATTEMPTS, generator)
    ratio = torch.exp(log_ratio).view(n, _CROP_ATTEMPTS)
    crop_w = torch.round(torch.sqrt(area * ratio))
    crop_h = torch.round(torch.sqrt(area / ratio))
    fits = (crop_w > 0) & (crop_h > 0) & (crop_w <= w) & (crop_h <= h)
    first = torch.where(fits.any(1), fits.double().argmax(1), torch.full((n,), -1, dtype=torch.long))
    rows = torch.arange(n)
    ch = crop_h[rows, first.clamp(min=0)]
    cw = crop_w[rows, first.clamp(min=0)]
    # Fallback (no attempt fitted): the largest centre crop within the ratio range.
    ratio_in = w[:, 0] / h[:, 0]
    fb_w = torch.where(ratio_in < spec.crop_ratio[0], w[:, 0], torch.where(ratio_in > spec.crop_ratio[1], torch.round(h[:, 0] * spec.crop_ratio[1]), w[:, 0]))
    fb_h = torch.where(ratio_in < spec.crop_ratio[0], torch.round(w[:, 0] / spec.crop_ratio[0]), h[:, 0])
    failed = first < 0
    ch = torch.where(failed, fb_h, ch)
    cw = torch.where(failed, fb_w, cw)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.floor(u[:, 0] * (h[:, 0] - ch + 1))
    left = torch.floor(u[:, 1] * (w[:, 0] - cw + 1))
    top = torch.where(failed, torch.floor((h[:, 0] - ch) / 2), top)
    left = torch.where(failed, torch.floor((w[:, 0] - cw) / 2), left)
    return torch.stack([top, left, ch, cw], 1)


def sample_params(heights: torch.Tensor, widths: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> AugmentParams:
    """Draw a batch's parameters for source images of the given sizes (pixels)."""
    n = heights.numel()
    crop = sample_crops(heights, widths, spec, generator)
    flip = torch.rand(n, generator=generator, dtype=torch.float64) < spec.flip_p
    angle = _uniform(-spec.rotation_deg, spec.rotation_deg, n, generator)
    max_shift = spec.translate * spec.output_size
    # torchvision rounds the translation to whole pixels.
    translation = torch.round(_uniform(-max_shift, max_shift, 2 * n, generator).view(n, 2))
    affine_scale = _uniform(*spec.scale, n, generator)
    brightness = _uniform(*spec.brightness, n, generator)
    contrast = _uniform(*spec.contrast, n, generator)
    blur = torch.rand(n, generator=generator, dtype=torch.float64) < spec.blur_p
    sigma = torch.where(blur, _uniform(*spec.blur_sigma, n, generator), torch.zeros(n, dtype=torch.float64))
    matrix = compose_matrix(crop, flip, angle, translation, affine_scale, spec.output_size)
    return AugmentParams(matrix, brightness, contrast, sigma, crop, flip, angle, translation, affine_scale)


def compose_matrix(crop, flip, angle, translation, affine_scale, output_size: int) -> torch.Tensor:
    """(B, 2, 3) map from output pixel coordinates to source pixel coordinates.

    Reading the pipeline backwards from an output point p (corner-origin pixel coordinates,
    centre c = S/2 of the S x S output):
      affine (rotate by angle, scale s about c, then shift t), inverted:  q = R(-angle)(p - c - t)/s + c
      flip, inverted:                                                      q.x = S - q.x
      resize of the crop to S x S, inverted, then the crop offset:         src = (top, left) + q * (h, w) / S
    torchvision's rotation is counter-clockwise for positive angles in image (y-down) coordinates.
    """
    s_out = float(output_size)
    c = s_out / 2
    a = torch.deg2rad(angle)
    cos, sin = torch.cos(a), torch.sin(a)
    n = angle.numel()
    # Inverse affine, as a 3x3 per sample. Counter-clockwise on screen (y down) is the matrix
    # [[cos, sin], [-sin, cos]] in (x, y); its inverse is the transpose.
    inv_rot = torch.zeros(n, 3, 3, dtype=torch.float64)
    inv_rot[:, 0, 0], inv_rot[:, 0, 1] = cos, -sin
    inv_rot[:, 1, 0], inv_rot[:, 1, 1] = sin, cos
    inv_rot[:, 2, 2] = 1
    inv_rot[:, :2, :2] /= affine_scale[:, None, None]
    shift = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    shift[:, 0, 2] = -(c + translation[:, 0])
    shift[:, 1, 2] = -(c + translation[:, 1])
    back = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    back[:, 0, 2] = c
    back[:, 1, 2] = c
    inv_affine = back @ inv_rot @ shift
    flip_m = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    flip_m[flip, 0, 0] = -1
    flip_m[flip, 0, 2] = s_out
    top, left, h, w = crop.unbind(1)
    crop_m = torch.zeros(n, 3, 3, dtype=torch.float64)
    crop_m[:, 0, 0] = w / s_out
    crop_m[:, 0, 2] = left
    crop_m[:, 1, 1] = h / s_out
    crop_m[:, 1, 2] = top
    crop_m[:, 2, 2] = 1
    return (crop_m @ flip_m @ inv_affine)[:, :2, :]


def eval_matrix(heights: torch.Tensor, widths: torch.Tensor, output_size: int) -> torch.Tensor:
    """Evaluation transform (paper, Appendix B): zero-pad to a centred square, resize to the
    output. As a (B, 2, 3) output-pixel -> source-pixel map like the training one."""
    side = torch.maximum(heights, widths).double()
    n = heights.numel()
    m = torch.zeros(n, 2, 3, dtype=torch.float64)
    m[:, 0, 0] = side / output_size
    m[:, 1, 1] = side / output_size
    m[:, 0, 2] = (widths.double() - side) / 2
    m[:, 1, 2] = (heights.double() - side) / 2
    return m
