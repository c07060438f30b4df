"""The paper's recipe written the plain way, the baseline of the pipeline and step benchmarks:
torchvision per-sample transforms in DataLoader workers, one sentence drawn with `random`."""

from __future__ import annotations

import random

from PIL import Image
from torch.utils.data import Dataset

from convirt_fast.data.augment import AugmentSpec


def paper_transform(spec: AugmentSpec):
    """PAPER.md's t_v with torchvision, in the paper's order."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(spec.output_size, scale=spec.crop_area, ratio=spec.crop_ratio),
        T.RandomHorizontalFlip(spec.flip_p),
        T.RandomAffine(spec.rotation_deg, translate=(spec.translate, spec.translate), scale=spec.scale),
        T.ColorJitter(brightness=spec.brightness, contrast=spec.contrast),
        T.RandomApply([T.GaussianBlur(spec.blur_kernel_size, spec.blur_sigma)], p=spec.blur_p),
        T.ToTensor(),
        T.Normalize([spec.mean], [spec.std]),
    ])


class PaperImages(Dataset):
    """Decode and transform one image at a time, `length` items cycling over `paths`."""

    def __init__(self, paths, spec: AugmentSpec, length: int, sentences: list[list[str]] | None = None):
        self.paths, self.length, self.sentences = paths, length, sentences
        self.transform = paper_transform(spec)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        j = i % len(self.paths)
        with Image.open(self.paths[j]) as image:
            pixels = self.transform(image.convert("L"))
        if self.sentences is None:
            return pixels
        return pixels, random.choice(self.sentences[j])
