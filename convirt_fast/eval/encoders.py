"""Encoders to evaluate, all behind one interface (`Encoder`), from whatever the user has:

- a run checkpoint (`.pt`, via load_checkpoint) or a run folder (checkpoints/best.pt, else
  last.pt; tokenizer/ beside): both sides and both projections;
- an exported `image_encoder.safetensors`: the image side, plus the image projection and the
  text side when the trainer's `image_projection.safetensors` and `text_encoder/` are beside it;
- `random`: a freshly initialised image encoder of the reference config's architecture;
- any other path: a torchvision state dict / safetensors through `load_image_weights`.

`features` are the pooled ResNet features (linear probe, fine-tuning); `encode_image` is the
projection v when there is one, else the features (image->image retrieval), so an image-only
encoder still ranks images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convirt_fast.config import Config
from convirt_fast.presets import cpu_default


class Encoder(nn.Module):
    """An image encoder with an optional image projection and an optional text side."""

    def __init__(self, name: str, image_encoder: nn.Module, image_projection: nn.Module | None = None,
                 text_encoder: nn.Module | None = None, text_projection: nn.Module | None = None,
                 tokenizer: Any | None = None, *, max_length: int = 64):
        super().__init__()
        self.name = name
        self.image_encoder = image_encoder
        self.image_projection = image_projection
        self.text_encoder = text_encoder
        self.text_projection = text_projection
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def has_text(self) -> bool:
        return self.text_encoder is not None and self.image_projection is not None and self.tokenizer is not None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        f = self.features(images)
        return self.image_projection(f) if self.image_projection is not None else f

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from convirt_fast.models.text_encoder import pooled_text_features

        if not self.has_text:
            raise RuntimeError(f"{self.name}: this encoder has no text side")
        return self.text_projection(pooled_text_features(self.text_encoder, input_ids, attention_mask))

    def fresh_image_encoder(self) -> nn.Module:
        """A trainable copy of the image encoder (fine-tuning starts from it)."""
        return copy.deepcopy(self.image_encoder).train().requires_grad_(True)


@dataclass
class LoadedEncoder:
    encoder: Encoder
    config: Config | None
    """The run's config when the encoder came from a run (its eval image size, its model)."""
    source: str


def _run_checkpoint(path: Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run folder or None)."""
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name, path
        raise FileNotFoundError(f"{path}: a folder without checkpoints/best.pt or checkpoints/last.pt (not a run folder?)")
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    return path, run


def _run_tokenizer(cfg: Config, run: Path | None, checkpoint: Path):
    from convirt_fast.text.tokenizer import load_tokenizer

    if cfg.model.text_encoder:
        return None  # build_model loads the pretrained BERT's own tokenizer
    candidates = [run / "tokenizer", run / "export" / "text_encoder"] if run else []
    for folder in candidates:
        if (folder / "tokenizer.json").exists() or (folder / "vocab.txt").exists():
            return load_tokenizer(folder)
    raise FileNotFoundError(f"{checkpoint}: no tokenizer found for this run (looked in {[str(c) for c in candidates]}); "
                            f"the run trained its own, so pass the run folder or a checkpoint inside it")


def load_run(path: str | Path) -> LoadedEncoder:
    """Both encoders and projections from a run checkpoint or run folder."""
    from convirt_fast.checkpoint import load_checkpoint
    from convirt_fast.models import build_model

    checkpoint, run = _run_checkpoint(Path(path))
    state = load_checkpoint(checkpoint)
    cfg = Config.from_dict(state["config"])
    tokenizer = _run_tokenizer(cfg, run, checkpoint)
    model, tokenizer = build_model(cfg.model, tokenizer=tokenizer)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"{checkpoint}: weights do not fit the model of its own config: {error}") from None
    name = run.name if run else checkpoint.stem
    encoder = Encoder(name, model.image_encoder, model.image_projection, model.text_encoder, model.text_projection,
                      tokenizer, max_length=cfg.data.max_length)
    return LoadedEncoder(encoder.eval(), cfg, f"{checkpoint} (step {state['step']})")


def load_exported(path: str | Path) -> LoadedEncoder:
    """An exported image_encoder.safetensors, with the image projection and the text folder the
    trainer writes beside it when they are there (then text->image and zero-shot work too)."""
    from safetensors import safe_open

    from convirt_fast.models import (IMAGE_PROJECTION_FILE, build_image_encoder, load_image_weights, load_projection,
                                     load_text_encoder)

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        arch = (f.metadata() or {}).get("arch", "unknown")
    if arch == "unknown":
        raise ValueError(f"{path}: no 'arch' in the file's metadata (not a convirt_fast export?); "
                         f"pass it as --init {path} with --arch NAME")
    encoder = build_image_encoder(arch, in_channels=1)
    load_image_weights(encoder, path)
    name = path.parent.parent.name if path.parent.name == "export" else path.stem
    projection_path, text_folder = path.with_name(IMAGE_PROJECTION_FILE), path.with_name("text_encoder")
    if not projection_path.is_file():
        return LoadedEncoder(Encoder(name, encoder).eval(), None, str(path))
    image_projection = load_projection(projection_path)
    bert, tokenizer, text_projection = load_text_encoder(text_folder) if text_folder.is_dir() else (None, None, None)
    return LoadedEncoder(Encoder(name, encoder, image_projection, bert, text_projection, tokenizer).eval(), None,
                         f"{path} (+ {projection_path.name}{', text_encoder/' if bert is not None else ''})")


def baseline(init: str, reference: Config | None, arch: str | None = None, seed: int = 0) -> LoadedEncoder:
    """`random` or a weights file, in the reference config's architecture (or `arch`)."""
    from convirt_fast.models import build_image_encoder, load_image_weights

    arch = arch or (reference or cpu_default()).model.image_encoder
    torch.manual_seed(seed)  # the random baseline is the same network every time
    encoder = build_image_encoder(arch, in_channels=1)
    if init == "random":
        return LoadedEncoder(Encoder(f"random ({arch})", encoder).eval(), None, f"random init, {arch}, seed {seed}")
    load_image_weights(encoder, init)
    return LoadedEncoder(Encoder(f"{Path(init).stem} ({arch})", encoder).eval(), None, str(init))


def load_encoder(source: str, reference: Config | None = None, arch: str | None = None) -> LoadedEncoder:
    """Dispatch on what `source` is (see the module doc)."""
    path = Path(source)
    if source == "random":
        return baseline("random", reference, arch)
    if not path.exists():
        raise FileNotFoundError(f"{source}: no such checkpoint, run folder or weights file")
    if path.is_dir() or path.suffix == ".pt" and _is_checkpoint(path):
        return load_run(path)
    if path.suffix == ".safetensors" and arch is None:
        return load_exported(path)
    return baseline(source, reference, arch)


def _is_checkpoint(path: Path) -> bool:
    """Whether `path` is a convirt_fast checkpoint. What torch.load raises for a file of another
    kind (a legacy or non-torch file, a truncated zip: RuntimeError; a pickled module: the
    weights-only unpickler's error) means no, and load_image_weights will say what it is; an
    unreadable file (OSError) or running out of memory is raised."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError):
        return False
    from convirt_fast.checkpoint import FORMAT

    return isinstance(state, dict) and state.get("format") == FORMAT
