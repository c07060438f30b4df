"""`convirt_fast.load_pretrained`: a trained ConVIRT model, its tokenizer and its evaluation
transform from whatever a run left, ready to embed images and text.

Three inputs, told apart by what is there:

- a run folder (`runs/<name>/`, with checkpoints/best.pt or last.pt; tokenizer/ beside): the
  weights of best.pt, else last.pt;
- a run checkpoint (`.pt`): those weights (the tokenizer from the run folder around it);
- an export folder (a run's `export/`, or a copy of it) or its `image_encoder.safetensors`:
  the image encoder, with the image projection and the text side when they are beside it; its
  `convirt.json` (written by `export_model`) gives the transform and max_length, so a copied
  export loads on its own (an older export without one needs its run's config.json one folder up).

The transform is the data pipeline's, not a re-implementation: what `prepare` does to an image
(`data/resize.py`: Lanczos down to 256 px on the long side, 16-bit kept) and then what the
evaluation loader does (`data/image_decode.pad_batch`, `augment.eval_matrix`,
`augment_torch.eval_batch`: zero-pad to a centred square, resize to the run's output size,
scale 8-bit by 255 and 16-bit by 65535, normalise with the run's mean/std), so an image given
here gets the pixels it would have got inside a prepared folder.

Used by `eval/encoders.py` too (`load_run_model`, `load_export_model`), so evaluation and users
load models the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from convirt_fast.data.augment import AugmentSpec
from convirt_fast.data.resize import LONG_SIDE
from convirt_fast.models.convirt import DEFAULT_MAX_LENGTH, ConVIRTModel
from convirt_fast.models.export import (
    IMAGE_ENCODER_FILE,
    IMAGE_PROJECTION_FILE,
    TEXT_ENCODER_DIR,
    ExportInfo,
    load_projection,
    load_text_encoder,
    read_export_info,
)
from convirt_fast.models.factory import model_config, model_from_checkpoint

CHECKPOINTS = ("best.pt", "last.pt")
"""A run folder's checkpoints, in the order they are preferred."""


# -- the evaluation transform -----------------------------------------------------------------


class EvalTransform:
    """One image -> the (1, S, S) float tensor the model takes (S = spec.output_size), on `device`.

    Accepts a PIL image, a numpy array (H, W) or (H, W, C) of uint8 or uint16 (C = 1, 3 or 4;
    colour becomes luminance as PIL's "L" conversion computes it, alpha ignored), or a path
    (read as `prepare` reads it: DICOM included). 16-bit values stay 16-bit until they are
    divided by 65535, as in the data pipeline. `long_side` (default 256, prepare's): images
    larger than this on their long side are first resized as `prepare` resizes them; None: never
    (for images already prepared)."""

    def __init__(self, spec: AugmentSpec, *, device: str | torch.device = "cpu", long_side: int | None = LONG_SIDE):
        self.spec = spec
        self.device = torch.device(device)
        self.long_side = long_side

    def __repr__(self) -> str:
        return (f"EvalTransform(output_size={self.spec.output_size}, mean={self.spec.mean}, std={self.spec.std}, "
                f"long_side={self.long_side}, device={self.device})")

    def pixels(self, image: Any) -> np.ndarray:
        """The (H, W) uint8 or uint16 array the data pipeline would read for `image`."""
        from PIL import Image

        from convirt_fast.data.image_decode import pil_pixels, read_image
        from convirt_fast.data.resize import resize_array, decode_resized

        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: image file not found")
            if self.long_side is None:
                return read_image(path)
            try:
                return np.asarray(decode_resized(path, self.long_side))
            except (OSError, SyntaxError) as error:
                raise ValueError(f"{path}: cannot decode image ({error})") from None
        if isinstance(image, Image.Image):
            pixels = pil_pixels(image)
        elif isinstance(image, np.ndarray):
            pixels = _array_pixels(image)
        else:
            raise TypeError(f"transform: expected a PIL image, a uint8/uint16 numpy array or a path, "
                            f"got {type(image).__name__}")
        if self.long_side is not None and max(pixels.shape) > self.long_side:
            pixels = np.asarray(resize_array(pixels, self.long_side))
        return pixels

    def __call__(self, image: Any) -> torch.Tensor:
        from convirt_fast.data.augment import eval_matrix
        from convirt_fast.data.augment_torch import eval_batch, to_unit_float
        from convirt_fast.data.image_decode import pad_batch

        canvas, heights, widths, max_value = pad_batch([self.pixels(image)])
        images = to_unit_float(canvas.to(self.device), max_value)
        return eval_batch(images, eval_matrix(heights, widths, self.spec.output_size), self.spec)[0]


def _array_pixels(array: np.ndarray) -> np.ndarray:
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"transform: a numpy image must be uint8 or uint16 (as decoded from a file), got {array.dtype}; "
                        f"scale it to one of those first")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return np.ascontiguousarray(array)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"transform: expected an (H, W) or (H, W, C) array with C = 1, 3 or 4, got shape {array.shape}")
    if array.dtype == np.uint8:
        from PIL import Image

        return np.asarray(Image.fromarray(np.ascontiguousarray(array[:, :, :3]), "RGB").convert("L"))
    # PIL has no 16-bit RGB: its RGB -> L formula (ITU-R 601-2 luma, fixed point), at 16 bits.
    rgb = array[:, :, :3].astype(np.int64)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint16)


# -- loading ----------------------------------------------------------------------------------


@dataclass
class RunModel:
    """A model loaded from a run checkpoint."""

    model: ConVIRTModel
    config: dict
    """The run's config (Config.to_dict(): sections model, data, loss, optim, train)."""
    checkpoint: Path
    step: int
    run: Path | None
    """The run folder around the checkpoint, when it is in one."""


def run_checkpoint(path: Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run folder or None) for a run folder or a checkpoint file."""
    if path.is_dir():
        for name in CHECKPOINTS:
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name, path
        raise FileNotFoundError(f"{path}: a folder without checkpoints/best.pt or checkpoints/last.pt (not a run folder?)")
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    return path, run


def _has_tokenizer(folder: Path) -> bool:
    from convirt_fast.text.tokenizer import VOCAB_FILES

    return folder.is_dir() and any((folder / name).is_file() for name in VOCAB_FILES)


def load_run_model(path: str | Path) -> RunModel:
    """The model of a run folder (best.pt, else last.pt) or run checkpoint, in eval mode on the CPU,
    with the run's tokenizer (its folder's tokenizer/, else export/text_encoder/, else the
    pretrained BERT's own) and max_length."""
    from convirt_fast.io import load_checkpoint
    from convirt_fast.text.tokenizer import load_tokenizer

    checkpoint, run = run_checkpoint(Path(path))
    state = load_checkpoint(checkpoint)
    cfg = model_config(state["config"], str(checkpoint))
    folders = [run / "tokenizer", run / "export" / TEXT_ENCODER_DIR] if run is not None else []
    found = next((f for f in folders if _has_tokenizer(f)), None)
    tokenizer = load_tokenizer(found) if found is not None else None
    if tokenizer is None and cfg.text_encoder is None:
        raise FileNotFoundError(f"{checkpoint}: no tokenizer found for this run (looked in {[str(f) for f in folders]}); "
                                f"the run trained its own, so pass the run folder or a checkpoint inside it")
    text_config = None
    if cfg.text_encoder is not None and not (Path(cfg.text_encoder) / "config.json").is_file():
        exported = run / "export" / TEXT_ENCODER_DIR if run is not None else None
        if exported is not None and (exported / "config.json").is_file():
            text_config = exported  # the pretrained BERT's folder is not on this machine; its export is
    name = run.name if run is not None else checkpoint.stem
    model = model_from_checkpoint(state, tokenizer, text_config=text_config, name=name, source=str(checkpoint))
    return RunModel(model, state["config"], checkpoint, int(state["step"]), run)


def _run_config_info(folder: Path) -> ExportInfo | None:
    """For an export written before convirt.json existed: its run's config.json, one folder up."""
    config = folder.parent / "config.json"
    if folder.name != "export" or not config.is_file():
        return None
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
        data = cfg.get("data") or {}
        return ExportInfo(folder.parent.name, model_config(cfg, str(config)), AugmentSpec(**data.get("augment", {})),
                          int(data.get("max_length", DEFAULT_MAX_LENGTH)))
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"{config}: cannot read the run's config: {error}") from None


def load_export_model(path: str | Path) -> tuple[ConVIRTModel, ExportInfo | None]:
    """An export folder or its image_encoder.safetensors: the image encoder, plus the image
    projection and the text side (text_encoder/) when they are beside it, in eval mode on the CPU;
    with the export's description (convirt.json, or its run's config.json) or None."""
    from safetensors import safe_open

    from convirt_fast.models.image_encoder import build_image_encoder
    from convirt_fast.models.weights import load_image_weights

    path = Path(path)
    image_file = path / IMAGE_ENCODER_FILE if path.is_dir() else path
    if not image_file.is_file():
        raise FileNotFoundError(f"{path}: no {IMAGE_ENCODER_FILE} here (not an export folder?)")
    folder = image_file.parent
    info = read_export_info(folder) or _run_config_info(folder)
    try:
        with safe_open(str(image_file), framework="pt") as f:
            arch = (f.metadata() or {}).get("arch", "unknown")
    except Exception as error:  # safetensors raises its own error types for foreign files
        raise ValueError(f"{image_file}: not a safetensors file ({type(error).__name__}: {error})") from None
    if arch == "unknown":
        raise ValueError(f"{image_file}: no 'arch' in the file's metadata (not a convirt_fast export?); "
                         f"pass it as --init {image_file} with --arch NAME")
    if info is not None and info.model.image_encoder != arch:
        raise ValueError(f"{image_file}: a {arch} but {folder / 'convirt.json'} says {info.model.image_encoder}")
    encoder = build_image_encoder(arch, in_channels=1)
    load_image_weights(encoder, image_file)
    projection_path, text_folder = folder / IMAGE_PROJECTION_FILE, folder / TEXT_ENCODER_DIR
    image_projection = load_projection(projection_path) if projection_path.is_file() else None
    bert = tokenizer = text_projection = None
    if image_projection is not None and text_folder.is_dir():
        bert, tokenizer, text_projection = load_text_encoder(text_folder)
    if info is not None:
        name = info.name
    else:
        name = folder.parent.name if folder.name == "export" else image_file.stem
    model = ConVIRTModel(
        encoder, bert, image_projection, text_projection, tokenizer=tokenizer,
        max_length=info.max_length if info is not None else DEFAULT_MAX_LENGTH, name=name,
        freeze_text_layers=info.model.freeze_text_layers if info is not None and bert is not None else 0,
        channels_last=info.model.channels_last if info is not None else False)
    return model.eval(), info


# -- load_pretrained --------------------------------------------------------------------------


@dataclass
class Pretrained:
    """What `load_pretrained` returns.

    model: the ConVIRTModel in eval mode on the device (`encode_image(images)`,
    `encode_text(["text", ...])`, `image_features(images)`); tokenizer: the text side's, None
    for an image-only export; transform: one image -> the (1, S, S) tensor `model` takes."""

    model: ConVIRTModel
    tokenizer: Any | None
    transform: EvalTransform
    source: str
    """Where the weights came from (the checkpoint and its step, or the export)."""
    config: dict | None = None
    """The run's config, when loaded from a run folder or checkpoint."""

    @property
    def augment(self) -> AugmentSpec:
        """The evaluation transform's spec (output size, mean, std)."""
        return self.transform.spec

    @torch.no_grad()
    def similarity(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """(B, T) cosine similarities between images and texts. `images`: image embeddings from
        `model.encode_image` ((B, d) or (d,)), or transformed images ((1, H, W) or (B, 1, H, W))."""
        if not self.model.has_text:
            raise RuntimeError(f"{self.source}: this model has no text side (an image encoder only), so no zero-shot")
        if isinstance(texts, str):
            texts = [texts]
        images = images.to(self.model.device)
        if images.ndim in (3, 4):
            images = self.model.encode_image(images[None] if images.ndim == 3 else images)
        elif images.ndim == 1:
            images = images[None]
        text = self.model.encode_text(list(texts))
        return (F.normalize(images.float(), dim=1) @ F.normalize(text.float(), dim=1).T).cpu()

    def zero_shot(self, image: torch.Tensor, texts: Sequence[str]) -> dict[str, float]:
        """One image against candidate texts (e.g. one finding each): {text: cosine similarity},
        best first. `image`: its embedding (1, d) from `model.encode_image`, or the transformed
        image (1, H, W) from `transform`. For a batch, `similarity`."""
        scores = self.similarity(image, texts)
        if scores.shape[0] != 1:
            raise ValueError(f"zero_shot takes one image, got {scores.shape[0]}; use similarity() for a batch")
        ranked = sorted(zip(texts, scores[0].tolist()), key=lambda item: -item[1])
        return {text: round(score, 4) for text, score in ranked}


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> Pretrained:
    """A trained model, its tokenizer and its evaluation transform (see the module doc) from a
    run folder, a run checkpoint (.pt), or an export folder / its image_encoder.safetensors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run folder, checkpoint or export")
    kind, path = path_kind(path)
    if kind == "run":
        loaded = load_run_model(path)
        model, config = loaded.model, loaded.config
        augment = AugmentSpec(**(config.get("data") or {}).get("augment", {}))
        source = f"{loaded.checkpoint} (step {loaded.step})"
    else:
        model, info = load_export_model(path)
        if info is None:
            raise ValueError(f"{path}: an export without convirt.json (written by convirt_fast's export_model) and "
                             f"not inside its run folder (no ../config.json): the evaluation transform (image size, "
                             f"mean, std) is unknown; load the run folder or checkpoint instead")
        config, augment, source = None, info.augment, str(path)
    device = torch.device(device)
    model.to(device).eval()
    return Pretrained(model, model.tokenizer, EvalTransform(augment, device=device), source, config)


def path_kind(path: Path) -> tuple[str, Path]:
    """("run", folder or checkpoint) or ("export", folder or safetensors file); a run folder
    without checkpoints (deleted to save space) loads its export/. Else a ValueError naming the path."""
    if path.is_dir():
        if any((path / "checkpoints" / name).is_file() for name in CHECKPOINTS):
            return "run", path
        if (path / IMAGE_ENCODER_FILE).is_file():
            return "export", path
        if (path / "export" / IMAGE_ENCODER_FILE).is_file():
            return "export", path / "export"
        raise ValueError(f"{path}: neither a run folder (checkpoints/best.pt or last.pt) nor an export folder "
                         f"({IMAGE_ENCODER_FILE}, convirt.json)")
    if path.suffix == ".pt":
        return "run", path
    if path.suffix == ".safetensors":
        return "export", path
    raise ValueError(f"{path}: not a run checkpoint (.pt) nor an exported {IMAGE_ENCODER_FILE}; "
                     f"pass a run folder, a checkpoint or an export folder")
