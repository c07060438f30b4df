"""The plain ConVIRT loss: N x N logits and two cross-entropies, obviously correct.

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
