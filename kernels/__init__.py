"""Triton kernels of convirt_fast, installed as `convirt_fast.kernels` (setup.py's package_dir).

`convirt_loss` is the fused ConVIRT contrastive loss (forward, backward, learnable temperature);
`reference.convirt_loss_reference` the plain formula that tests and benchmarks compare against;
`distributed.convirt_loss_gathered` its global-batch form across ranks.
"""

from .convirt_loss import convirt_loss

__all__ = ["convirt_loss"]
