"""Projections g_v, g_u: encoder features -> the d-dimensional space the loss compares in."""

from __future__ import annotations

from torch import nn


class Projection(nn.Sequential):
    """mlp: Linear -> ReLU -> Linear (the paper); linear: one Linear (the paper's ablation).

    (B, in_features) -> (B, out_features). Not normalised: the loss L2-normalises."""

    def __init__(self, in_features: int, out_features: int = 512, *, hidden: int | None = None, kind: str = "mlp"):
        if kind == "mlp":
            hidden = hidden or in_features  # the paper does not state the hidden width
            layers: list[nn.Module] = [nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features)]
        elif kind == "linear":
            layers = [nn.Linear(in_features, out_features)]
        else:
            raise ValueError(f"projection kind must be mlp or linear, got {kind!r}")
        super().__init__(*layers)
        self.kind = kind
        self.in_features, self.out_features = in_features, out_features
