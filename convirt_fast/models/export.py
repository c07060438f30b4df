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
`transformers.AutoModel.from_pretrained(folder)` (or BertModel) and
`AutoTokenizer.from_pretrained(folder)` without any missing, unexpected or "newly initialized"
weight), plus the text projection g_u as `text_projection.safetensors` (keys of `Projection`:
"0.weight", "0.bias", "2.weight", "2.bias" for mlp, "0.*" for linear; metadata "kind"). Features
are the max-pool of the last hidden states over the attention mask (`masked_max_pool`), not
`pooler_output`: the BERT's pooler is saved as zeros (ConVIRT never trains one; a transformers
BertModel expects one). `load_text_encoder` rebuilds all three.

Image projection g_v -> `image_projection.safetensors` (`export_projection`, same keys), beside
the image encoder: with it and the text folder, an export alone ranks images for a text query.

`export_model` writes all of them and `convirt.json` (EXPORT_INFO_FILE: the model config, the
evaluation transform's AugmentSpec and max_length), so that the folder alone loads with
`convirt_fast.load_pretrained`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from convirt_fast.data.augment import AugmentSpec
from convirt_fast.io import atomic_folder, atomic_write, atomic_write_json
from convirt_fast.models.config import ModelConfig
from convirt_fast.models.projection import Projection

if TYPE_CHECKING:
    from transformers import BertModel

    from convirt_fast.models.convirt import ConVIRTModel

IMAGE_ENCODER_FILE = "image_encoder.safetensors"
TEXT_PROJECTION_FILE = "text_projection.safetensors"
IMAGE_PROJECTION_FILE = "image_projection.safetensors"
TEXT_ENCODER_DIR = "text_encoder"
EXPORT_INFO_FILE = "convirt.json"
"""The export's description: model config, evaluation AugmentSpec, max_length (`export_model`)."""
EXPORT_FORMAT = "convirt_fast.export/1"


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
    with atomic_folder(folder) as tmp:
        bert = model.text_encoder
        # With the pooler BertModel has by default (zeros, below), so that the folder loads cleanly
        # with transformers.AutoModel / BertModel.from_pretrained: without it transformers would
        # initialise one at random and report it "newly initialized".
        bert.save_pretrained(tmp, state_dict={**bert.state_dict(), **_zero_pooler(bert)})
        tokenizer.save_pretrained(tmp)
        (tmp / TEXT_PROJECTION_FILE).write_bytes(_projection_bytes(model.text_projection))
    return folder


def _zero_pooler(bert: BertModel) -> dict[str, torch.Tensor]:
    """BERT's pooler (dense H x H + tanh on the [CLS] vector) as zeros: ConVIRT never trains it
    (its text feature is the max-pool of the last hidden states), so the exported pooler maps
    every input to 0 and cannot pass for a trained layer."""
    weight = bert.get_input_embeddings().weight
    hidden = bert.config.hidden_size
    zeros = torch.zeros(hidden, hidden, dtype=weight.dtype, device=weight.device)
    return {"pooler.dense.weight": zeros, "pooler.dense.bias": zeros[0].clone()}


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


def export_model(model: ConVIRTModel, folder: str | Path, *, model_config: ModelConfig, augment: AugmentSpec,
                 max_length: int | None = None, tokenizer: Any | None = None, name: str | None = None) -> Path:
    """Everything an export holds, into `folder` (a run's export/): image_encoder.safetensors,
    image_projection.safetensors (when the model has g_v), text_encoder/ (when it has a text
    side; the tokenizer is `tokenizer` or the model's), and EXPORT_INFO_FILE last: the model
    config, the evaluation transform's AugmentSpec and max_length, so that the folder alone
    loads (`convirt_fast.load_pretrained`). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    export_image_encoder(model, folder / IMAGE_ENCODER_FILE)
    files = {"image_encoder": IMAGE_ENCODER_FILE}
    if model.image_projection is not None:
        export_projection(model.image_projection, folder / IMAGE_PROJECTION_FILE)
        files["image_projection"] = IMAGE_PROJECTION_FILE
    if model.text_encoder is not None:
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        if tokenizer is None:
            raise ValueError("export_model: the model has a text encoder but no tokenizer (pass tokenizer=)")
        export_text_encoder(model, tokenizer, folder / TEXT_ENCODER_DIR)
        files["text_encoder"] = TEXT_ENCODER_DIR + "/"
    info = {
        "format": EXPORT_FORMAT,
        "name": name or model.name,
        "model": dataclasses.asdict(model_config),
        "augment": dataclasses.asdict(augment),
        "max_length": int(max_length if max_length is not None else model.max_length),
        "files": files,
    }
    atomic_write_json(folder / EXPORT_INFO_FILE, info)
    return folder


@dataclasses.dataclass
class ExportInfo:
    """An export's EXPORT_INFO_FILE, read."""

    name: str
    model: ModelConfig
    augment: AugmentSpec
    max_length: int


def read_export_info(folder: str | Path) -> ExportInfo | None:
    """The export folder's EXPORT_INFO_FILE, or None when it has none (written before it existed)."""
    path = Path(folder) / EXPORT_INFO_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if info.get("format") != EXPORT_FORMAT:
            raise ValueError(f"format {info.get('format')!r}, expected {EXPORT_FORMAT!r}")
        return ExportInfo(str(info.get("name") or Path(folder).name), ModelConfig(**info["model"]),
                          AugmentSpec(**info["augment"]), int(info["max_length"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a readable convirt_fast export description: {error}") from None
