"""The plain recipe: ConVIRT training as a competent engineer writes it in an afternoon, the
baseline of the end-to-end and image-pipeline benchmarks (DESIGN.md section 8).

- images: torchvision per-sample transforms (the paper's t_v, PIL) in as many DataLoader
  workers as cores (capped at 16), pinned memory, persistent workers, non-blocking copies;
- text: one sentence per study drawn with `random`, the Hugging Face tokenizer called per batch
  (in the workers, in collate_fn);
- loss: open_clip's ClipLoss (two logits matrices, two cross-entropies, lam-weighted);
- step: bf16 autocast and fused AdamW on CUDA, channels_last (as the model config says),
  cudnn.benchmark on CUDA; the loss read on the host every log_every steps, not every step.
The models are ours (`build_model`), so a ratio measures the parts around them.
"""

from __future__ import annotations

import contextlib
import os
import random

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

from convirt_fast.data.augment import AugmentSpec
from convirt_fast.kernels.reference import open_clip_style  # the one open_clip-style loss of every benchmark

MAX_WORKERS = 16


def plain_workers() -> int:
    """As many DataLoader workers as cores, capped."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


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


class PlainImages(Dataset):
    """Decode and transform one image at a time (and draw one of its sentences)."""

    def __init__(self, paths, spec: AugmentSpec, sentences: list[list[str]] | None = None):
        self.paths, self.sentences = paths, sentences
        self.transform = paper_transform(spec)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as image:
            pixels = self.transform(image.convert("L"))
        if self.sentences is None:
            return pixels
        return pixels, random.choice(self.sentences[i])


def plain_loader(dataset: Dataset, batch_size: int, num_samples: int, device: torch.device, collate_fn=None,
                 workers: int | None = None) -> DataLoader:
    """Shuffled batches, epoch after epoch without draining the workers (num_samples in all)."""
    workers = plain_workers() if workers is None else workers
    return DataLoader(dataset, batch_size=batch_size, sampler=RandomSampler(dataset, num_samples=num_samples),
                      num_workers=workers, collate_fn=collate_fn, drop_last=True, pin_memory=device.type == "cuda",
                      persistent_workers=workers > 0)


class PlainRecipe:
    """Loader + step of the plain recipe for `model` (a built ConVIRT model on `device`)."""

    def __init__(self, model, tokenizer, paths, sentences, spec: AugmentSpec, batch_size: int, num_steps: int,
                 device: torch.device, *, tau: float = 0.1, lam: float = 0.75, lr: float = 1e-4,
                 weight_decay: float = 1e-6, max_length: int = 64, workers: int | None = None, log_every: int = 10):
        self.model, self.device, self.tau, self.lam = model, device, tau, lam
        self.log_every, self.steps, self.last_loss = log_every, 0, None
        self.channels_last = getattr(model, "channels_last", False)
        cuda = device.type == "cuda"
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=cuda)

        def collate(items):
            images = torch.stack([im for im, _ in items])
            tokens = tokenizer([s for _, s in items], padding="longest", truncation=True, max_length=max_length,
                               return_tensors="pt")
            return images, tokens["input_ids"], tokens["attention_mask"]

        self.loader = plain_loader(PlainImages(paths, spec, sentences), batch_size, num_steps * batch_size, device,
                                   collate, workers)
        self._batches = iter(self.loader)

    def close(self) -> None:
        """Stop the workers now, so that they do not compete with the next case for the cores."""
        shutdown = getattr(self._batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._batches = self.loader = None

    def autocast(self):
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def step(self) -> None:
        images, input_ids, attention_mask = next(self._batches)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=True, memory_format=memory_format)
        input_ids = input_ids.to(self.device, non_blocking=True)
        attention_mask = attention_mask.to(self.device, non_blocking=True)
        with self.autocast():  # as open_clip's training loop: forward and loss under autocast
            out = self.model(images, input_ids, attention_mask)
            loss = open_clip_style(out["image"], out["text"], self.tau, self.lam)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        if self.steps % self.log_every == 0:  # the loss printed every log_every steps: a host read
            self.last_loss = loss.item()
