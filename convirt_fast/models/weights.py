"""Reading image-encoder weights from local files: torchvision state dicts and safetensors.

Accepted, so that users can pass what they have: a `.pth`/`.pt` torchvision state dict (or a
checkpoint dict holding one under "state_dict"/"model"), a `.safetensors` file; keys with or
without `fc.*` (dropped: the encoder has no classifier); keys prefixed by DDP (`module.`),
`torch.compile` (`_orig_mod.`) or a ConVIRT model (`image_encoder.`, other branches dropped);
a three-channel stem (summed to one channel). Everything else must match exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from convirt_fast.models.image_encoder import stem_weight_to_channels

# Wrappers' prefixes, stripped wherever they appear at the front of a key (any order).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# A full ConVIRT state dict: only this branch is the image encoder.
_BRANCH_PREFIX = "image_encoder."
# Checkpoint dicts that nest the state dict one level down.
_NESTED_KEYS = ("state_dict", "model")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors in `path` (safetensors by suffix, else torch.load with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign files: say which file, keep the cause
        raise ValueError(f"{path}: cannot read image weights ({type(e).__name__}: {e})") from e
    for key in _NESTED_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors (got {type(state).__name__})")
    return dict(state)


def normalize_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, keep only the image branch of a ConVIRT state dict, drop fc.*."""
    stripped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    if any(k.startswith(_BRANCH_PREFIX) for k in stripped):
        stripped = {k[len(_BRANCH_PREFIX):]: v for k, v in stripped.items() if k.startswith(_BRANCH_PREFIX)}
    return {k: v for k, v in stripped.items() if not k.startswith("fc.")}


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)})"


def load_image_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load the weights in `path` into `encoder` (from `build_image_encoder`), strictly.

    Raises ValueError naming the file and the missing, unexpected and wrongly shaped keys."""
    path = Path(path)
    state = normalize_keys(read_state_dict(path))
    own = encoder.state_dict()
    if "conv1.weight" in state and "conv1.weight" in own:
        state["conv1.weight"] = stem_weight_to_channels(state["conv1.weight"], own["conv1.weight"].shape[1])
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        arch = getattr(encoder, "convirt_arch", type(encoder).__name__)
        problems = []
        if missing:
            problems.append(f"missing keys {_describe(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_describe(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches (file vs model) {_describe(mismatched)}")
        raise ValueError(f"{path}: weights do not fit {arch}: " + "; ".join(problems))
    encoder.load_state_dict(state, strict=True)


def expand_stem(state_dict: Mapping[str, torch.Tensor], in_channels: int = 3) -> dict[str, torch.Tensor]:
    """A copy of an exported (one-channel) state dict whose conv1 takes `in_channels` inputs:
    the kernel repeated and divided by `in_channels`, so a gray image replicated to RGB gives
    exactly the one-channel model's features. Needed to load into `torchvision.models.resnet*`."""
    if "conv1.weight" not in state_dict:
        raise KeyError("expand_stem: no 'conv1.weight' in the state dict (is it a torchvision ResNet's?)")
    expanded = dict(state_dict)
    expanded["conv1.weight"] = stem_weight_to_channels(state_dict["conv1.weight"], in_channels)
    return expanded
