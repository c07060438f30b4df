"""convirt_fast: ConVIRT contrastive pretraining of medical image encoders, made fast.

Public entry points are imported lazily so that `import convirt_fast.text` stays light
(no torch import) for data-preparation workers.
"""

__version__ = "0.1.0"

__all__ = ["ConVIRTLoss", "convirt_loss", "load_pretrained", "__version__"]


def __getattr__(name: str):
    if name == "ConVIRTLoss":
        from convirt_fast.loss import ConVIRTLoss

        return ConVIRTLoss
    if name == "convirt_loss":  # the functional form; ConVIRTLoss holds its hyper-parameters
        from convirt_fast.kernels.convirt_loss import convirt_loss

        return convirt_loss
    if name == "load_pretrained":
        from convirt_fast.models.pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'convirt_fast' has no attribute {name!r}")
