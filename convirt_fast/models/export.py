"""Exporting the trained encoders for use outside convirt_fast.

Image encoder -> one safetensors file with torchvision's ResNet keys, no `fc.*` keys (the
encoder has no classifier) and a one-channel conv1. Load it into torchvision like this:

    import torch, torchvision
    from safetensors.torch import load_file
    from convirt_fast.models import expand_stem

    m = torchvision.models.resnet50()
    m.fc = torch.nn.Identity()            # or keep fc and pass strict=False (only fc.* missing)
    m.load_state_dict(expand_stem(load_file("image_encoder.safetensors")), strict=True)

`expand_stem` makes conv1 three-channel (the kernel repeated and divided by 3), so the model
gives a gray image replicated to RGB exactly the features the one-channel model gave the gray
image. Inputs must be normalised as in training (one gray mean/std on all three channels).
The file's metadata records the architecture ("arch") and the stem's channels ("in_channels").

Text encoder -> a folder: the BertModel and the tokenizer (`save_pretrained`, loadable with
`BertModel.from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)`), plus the text
projection g_u as `text_projection.safetensors` (keys of `Projection`: "0.weight", "0.bias",
"2.weight", "2.bias" for mlp, "0.*" for linear; metadata "kind"). Features are the max-pool of
the last hidden states over the attention mask (`masked_max_pool`); `load_text_encoder`
rebuilds all three.

Image projection g_v -> `image_projection.safetensors` (`export_projection`, same keys), beside
the image encoder: with it and the text folder, an export alone ranks images for a text query.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from convirt_fast.data.atomic import atomic_write
from convirt_fast.models.projection import Projection

if TYPE_CHECKING:
    from transformers import BertModel

TEXT_PROJECTION_FILE = "text_projection.safetensors"
IMAGE_PROJECTION_FILE = "image_projection.safetensors"


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors wants dense row-major CPU tensors; channels_last conv weights are not.
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def export_image_encoder(model: nn.Module, path: str | Path) -> Path:
    """Write the image encoder of `model` (a ConVIRTModel or the ResNet itself) to `path`
    (safetensors, torchvision keys, written atomically). Returns the path."""
    encoder = getattr(model, "image_encoder", model)
    tensors = _tensors(encoder)
    if any(k.startswith("fc.") for k in tensors):
        raise ValueError("export_image_encoder: the encoder still has a classifier (fc); expected fc = Identity")
    metadata = {
        "format": "pt",
        "arch": str(getattr(encoder, "convirt_arch", "unknown")),
        "in_channels": str(tensors["conv1.weight"].shape[1]),
    }
    path = Path(path)
    with atomic_write(path, "wb") as f:
        f.write(save(tensors, metadata=metadata))
    return path


def export_text_encoder(model: nn.Module, tokenizer: Any, folder: str | Path) -> Path:
    """Write the BERT, the tokenizer and the text projection of `model` into `folder`.

    The folder is assembled beside its destination and then renamed into place, so a reader
    never sees a half-written export; an existing folder is replaced."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        model.text_encoder.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / TEXT_PROJECTION_FILE).write_bytes(_projection_bytes(model.text_projection))
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_text_encoder(folder: str | Path) -> tuple[BertModel, Any, Projection]:
    """(bert, tokenizer, text projection) from a folder written by `export_text_encoder`."""
    from convirt_fast.models.text_encoder import load_bert
    from convirt_fast.text.tokenizer import load_tokenizer

    folder = Path(folder)
    bert, tokenizer = load_bert(folder), load_tokenizer(folder)
    projection_path = folder / TEXT_PROJECTION_FILE
    if not projection_path.is_file():
        raise FileNotFoundError(f"{projection_path}: text projection not found (not a convirt_fast text export?)")
    return bert.eval(), tokenizer, load_projection(projection_path)


def _projection_bytes(projection: Projection) -> bytes:
    return save(_tensors(projection), metadata={"format": "pt", "kind": projection.kind})


def export_projection(projection: Projection, path: str | Path) -> Path:
    """Write a projection (g_v or g_u) as safetensors (keys of `Projection`, metadata "kind"),
    atomically. The trainer writes g_v as export/image_projection.safetensors, so that an export
    alone supports text->image retrieval and zero-shot."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        f.write(_projection_bytes(projection))
    return path


def load_projection(path: str | Path) -> Projection:
    """A projection written by `export_projection` (or the text export's), in eval mode."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        kind = (f.metadata() or {}).get("kind", "mlp")
    state = load_file(str(path))
    try:
        first, last = state["0.weight"], state["2.weight" if kind == "mlp" else "0.weight"]
        projection = Projection(first.shape[1], last.shape[0], hidden=first.shape[0], kind=kind)
        projection.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError) as error:
        raise ValueError(f"{path}: not a projection export ({kind}): {error}") from None
    return projection.eval()
