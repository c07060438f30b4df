"""The plain ConVIRT loss: N x N logits and two cross-entropies, obviously correct; and the
open_clip ClipLoss baseline the benchmarks compare with.

The one reference that tests and benchmarks import (STYLE.md rule 3). It computes in the dtype it
is given (no upcast), so it doubles as "the same computation in plain low-precision torch" in the
accuracy tests; pass float64 inputs for the exact value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def convirt_loss_reference(
    img: torch.Tensor,
    txt: torch.Tensor,
    tau: float | torch.Tensor = 0.1,
    lam: float = 0.75,
    *,
    normalize: bool = True,
) -> torch.Tensor:
    """L = (1/N) sum_i [lam * l_i(v->u) + (1 - lam) * l_i(u->v)] (PAPER.md, "Loss").

    img, txt: (N, D), row i of one paired with row i of the other. tau: float or 0-d tensor.
    Returns a 0-d tensor in the computation dtype (that of img and txt).
    """
    v = F.normalize(img, dim=1) if normalize else img
    u = F.normalize(txt, dim=1) if normalize else txt
    logits = v @ u.t() / tau  # logits[i, k] = <v_i, u_k> / tau
    labels = torch.arange(img.shape[0], device=img.device)
    image_to_text = F.cross_entropy(logits, labels)  # mean_i l_i(v->u)
    text_to_image = F.cross_entropy(logits.t(), labels)  # mean_i l_i(u->v)
    return lam * image_to_text + (1.0 - lam) * text_to_image


def open_clip_style(img: torch.Tensor, txt: torch.Tensor, tau: float | torch.Tensor = 0.1,
                   lam: float = 0.75) -> torch.Tensor:
    """open_clip's `ClipLoss` (loss.py, world_size = 1) on normalised features with logit_scale =
    1/tau: two logits matrices, each direction's cross-entropy, weighted by lam as ConVIRT's
    directions (ClipLoss itself takes the mean, lam = 0.5). The baseline that benchmarks and the
    GPU check measure against (DESIGN.md section 1: never slower than it at any N)."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits_per_image = (1.0 / tau) * img @ txt.t()
    logits_per_text = (1.0 / tau) * txt @ img.t()
    labels = torch.arange(img.shape[0], device=img.device)
    return lam * F.cross_entropy(logits_per_image, labels) + (1 - lam) * F.cross_entropy(logits_per_text, labels)
