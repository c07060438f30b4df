"""The DALI augmentation backend: decode (nvJPEG on a GPU) and the paper's t_v in one pipeline.

The pipeline takes, per batch, the encoded files and the parameters drawn by
`augment.sample_params` (the same draws the torch backend uses), so the two backends compute
the same images up to interpolation details. On a GPU, decoding is `device="mixed"` (nvJPEG)
and every operator runs on the GPU; without one (`device_id=None`) the same graph runs DALI's
CPU operators. Images are decoded straight to float (DALI scales 8- and 16-bit sources to
[0, 1]), which also keeps 16-bit PNGs at full precision and avoids the CPU warp/brightness
operators' lack of uint16 support.
"""

from __future__ import annotations

import numpy as np
import torch

from convirt_fast.data.augment import AugmentSpec

# A blur sigma that makes the fixed-size kernel a delta: "no blur" for a sample in a batch
# whose other samples are blurred (DALI derives sigma from the window when given 0).
_NO_BLUR_SIGMA = 1e-3


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class DaliAugmenter:
    """Decode + augment (or the evaluation transform) batches of encoded images with DALI.

    `__call__(encoded, matrices, brightness, contrast, blur_sigma)` returns a (B, 1, S, S)
    float32 tensor on the pipeline's device (CUDA device `device_id`, or the CPU for None).
    """

    def __init__(self, spec: AugmentSpec, batch_size: int, *, device_id: int | None = None,
                 num_threads: int = 2, normalize: bool = True, seed: int = 0):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali import math as dmath

        self.spec = spec
        self.batch_size = batch_size
        self.device_id = device_id
        gpu = device_id is not None

        @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                      prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            matrix = fn.external_source(name="matrix", dtype=types.FLOAT, ndim=2)
            brightness = fn.external_source(name="brightness", dtype=types.FLOAT, ndim=0)
            contrast = fn.external_source(name="contrast", dtype=types.FLOAT, ndim=0)
            sigma = fn.external_source(name="sigma", dtype=types.FLOAT, ndim=0)
            images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.GRAY,
                                       dtype=types.FLOAT)
            images = fn.warp_affine(images, matrix=matrix, size=[spec.output_size, spec.output_size],
                                    fill_value=0.0, interp_type=types.INTERP_LINEAR, inverse_map=True)
            mean = fn.reductions.mean(images)
            if gpu:
                brightness, contrast = brightness.gpu(), contrast.gpu()
            images = brightness * (mean + contrast * (images - mean))
            images = fn.gaussian_blur(images, sigma=sigma, window_size=spec.blur_kernel_size)
            images = dmath.clamp(images, 0.0, 1.0)
            if normalize:
                images = (images - spec.mean) / spec.std
            return fn.transpose(images, perm=[2, 0, 1])

        self.pipeline = pipeline()
        self.pipeline.build()

    def __call__(self, encoded: list[np.ndarray], matrices: torch.Tensor, brightness: torch.Tensor,
                 contrast: torch.Tensor, blur_sigma: torch.Tensor) -> torch.Tensor:
        n = len(encoded)
        if n == 0 or n > self.batch_size:
            raise ValueError(f"batch of {n} images for a DALI pipeline of batch size {self.batch_size}")
        sigma = torch.where(blur_sigma > 0, blur_sigma, torch.full_like(blur_sigma, _NO_BLUR_SIGMA))
        p = self.pipeline
        p.feed_input("encoded", [np.asarray(e, dtype=np.uint8) for e in encoded])
        p.feed_input("matrix", [m for m in matrices.float().numpy()])
        p.feed_input("brightness", [np.float32(v) for v in brightness.tolist()])
        p.feed_input("contrast", [np.float32(v) for v in contrast.tolist()])
        p.feed_input("sigma", [np.float32(v) for v in sigma.tolist()])
        (out,) = p.run()
        return _to_torch(out, self.device_id)

    def evaluate(self, encoded: list[np.ndarray], matrices: torch.Tensor) -> torch.Tensor:
        """The evaluation transform: same pipeline with identity photometric parameters."""
        ones = torch.ones(len(encoded), dtype=torch.float64)
        return self(encoded, matrices, ones, ones, torch.zeros_like(ones))


def _to_torch(out, device_id: int | None) -> torch.Tensor:
    """A DALI TensorList (uniform shape) -> torch tensor, without a host round trip on GPU."""
    if device_id is None:
        return torch.from_numpy(out.as_array().copy())
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = out.as_tensor()
    result = torch.empty(dense.shape(), dtype=torch.float32, device=f"cuda:{device_id}")
    feed_ndarray(dense, result, cuda_stream=torch.cuda.current_stream(device_id))
    return result
