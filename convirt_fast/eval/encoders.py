"""The models to evaluate, all `ConVIRTModel`s, from whatever the user has:

- a run checkpoint (`.pt`, via load_checkpoint) or a run folder (checkpoints/best.pt, else
  last.pt; tokenizer/ beside): both sides and both projections;
- an export folder or its `image_encoder.safetensors`: the image side, plus the image
  projection and the text side when the trainer's `image_projection.safetensors` and
  `text_encoder/` are beside it;
- `random`: a freshly initialised image encoder of the reference config's architecture;
- any other path: a torchvision state dict / safetensors through `load_image_weights`.

The loading is the models layer's (`convirt_fast.models.pretrained`, as `load_pretrained` does).
`image_features` are the pooled ResNet features (linear probe, fine-tuning); `encode_image` is
the projection v when there is one, else the features (image->image retrieval), so an
image-only model still ranks images.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from convirt_fast.data.augment import AugmentSpec
from convirt_fast.models.config import ModelConfig
from convirt_fast.models.convirt import ConVIRTModel


@dataclass
class LoadedEncoder:
    encoder: ConVIRTModel
    config: dict | None
    """The run's config (Config.to_dict()) when the model came from a run: its data, its model."""
    source: str
    augment: AugmentSpec | None = None
    """The evaluation transform's spec the model was trained with, when known (a run, an export
    with convirt.json)."""


def load_run(path: str | Path) -> LoadedEncoder:
    """Both encoders and projections from a run checkpoint or run folder."""
    from convirt_fast.models.pretrained import load_run_model

    loaded = load_run_model(path)
    augment = AugmentSpec(**(loaded.config.get("data") or {}).get("augment", {}))
    return LoadedEncoder(loaded.model, loaded.config, f"{loaded.checkpoint} (step {loaded.step})", augment)


def load_exported(path: str | Path) -> LoadedEncoder:
    """An exported image_encoder.safetensors (or the export folder holding it), with the image projection and the text folder the
    trainer writes beside it when they are there (then text->image and zero-shot work too)."""
    from convirt_fast.models.pretrained import IMAGE_ENCODER_FILE, load_export_model

    path = Path(path)
    model, info = load_export_model(path)
    path = path / IMAGE_ENCODER_FILE if path.is_dir() else path
    extras = [name for name, there in (("image_projection.safetensors", model.image_projection is not None),
                                       ("text_encoder/", model.text_encoder is not None)) if there]
    source = f"{path} (+ {', '.join(extras)})" if extras else str(path)
    return LoadedEncoder(model, None, source, info.augment if info is not None else None)


def baseline(init: str, reference: ModelConfig | None, arch: str | None = None, seed: int = 0) -> LoadedEncoder:
    """`random` or a weights file, as an image-only model in the reference model config's
    architecture (or `arch`; with neither, ModelConfig's default)."""
    from convirt_fast.models.factory import build_image_model

    base = reference if reference is not None else ModelConfig()
    cfg = dataclasses.replace(base, image_encoder=arch or base.image_encoder,
                              image_weights=None if init == "random" else str(init))
    torch.manual_seed(seed)  # the random baseline is the same network every time
    if init == "random":
        model = build_image_model(cfg, name=f"random ({cfg.image_encoder})")
        return LoadedEncoder(model.eval(), None, f"random init, {cfg.image_encoder}, seed {seed}")
    model = build_image_model(cfg, name=f"{Path(init).stem} ({cfg.image_encoder})")
    return LoadedEncoder(model.eval(), None, str(init))


def load_encoder(source: str, reference: ModelConfig | None = None, arch: str | None = None) -> LoadedEncoder:
    """Dispatch on what `source` is (see the module doc)."""
    path = Path(source)
    if source == "random":
        return baseline("random", reference, arch)
    if not path.exists():
        raise FileNotFoundError(f"{source}: no such checkpoint, run folder or weights file")
    if path.is_dir():  # as load_pretrained reads folders (a run folder without checkpoints: its export/)
        from convirt_fast.models.pretrained import path_kind

        kind, path = path_kind(path)
        return load_exported(path) if kind == "export" else load_run(path)
    if path.suffix == ".pt" and _is_checkpoint(path):
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
    from convirt_fast.io import CHECKPOINT_FORMAT as FORMAT

    return isinstance(state, dict) and state.get("format") == FORMAT
