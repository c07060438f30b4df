"""Triton kernels of convirt_fast, installed as `convirt_fast.kernels` (setup.py's package_dir).

`convirt_loss` is the fused ConVIRT contrastive loss (forward, backward, learnable temperature);
`reference.convirt_loss_reference` the plain formula that tests and benchmarks compare against;
`distributed.convirt_loss_gathered` its global-batch form across ranks.
"""

if __name__ == "convirt_fast.kernels":
    from .convirt_loss import convirt_loss

    __all__ = ["convirt_loss"]
else:
    # Imported as a top-level `kernels`: the checkout's root is on sys.path (`python -m ...` or
    # pytest run from it) and something probed for Hugging Face's `kernels` package, as
    # transformers does (find_spec, then an import when no metadata is found). Loading the loss
    # here would register its custom ops a second time, from a second copy of every module, and
    # calls and monkeypatches would reach one copy or the other. So nothing is loaded, and without
    # a __file__ the probe takes this folder for the namespace-package shadow it is: "not installed".
    __file__ = None
    __all__ = []
