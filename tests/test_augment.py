"""The paper's image transformation: parameter distributions, what the images show, backends."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from convirt_fast.data.augment import AugmentSpec, eval_matrix, sample_params
from convirt_fast.data.augment_dali import DaliAugmenter, dali_available
from convirt_fast.data.augment_torch import augment_batch, eval_batch, gaussian_kernels, to_unit_float, warp
from convirt_fast.data.image_decode import (ImageError, MAX_16BIT, decode_jpegs_on_device, image_size, pad_batch,
                                            pad_batch_on_device, read_encoded, read_image)

needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI not installed (pip install -e '.[dali]')")
# A KS or binomial test at this level fails by chance once in 10,000 runs: a real mismatch
# at these sample sizes gives p-values many orders of magnitude smaller.
P_MIN = 1e-4


def only(**changes) -> AugmentSpec:
    """A spec with every transform off except the given fields."""
    spec = AugmentSpec.identity()
    for name, value in changes.items():
        setattr(spec, name, value)
    return spec


def draw(spec, n=3000, size=(256, 256), seed=0):
    h = torch.full((n,), size[0])
    w = torch.full((n,), size[1])
    return sample_params(h, w, spec, torch.Generator().manual_seed(seed))


def uniform_p(samples, low, high):
    return stats.kstest(np.asarray(samples, dtype=np.float64), stats.uniform(low, high - low).cdf).pvalue


# ----------------------------------------------------------------------------------------------
# Spec


def test_spec_defaults_are_the_paper():
    spec = AugmentSpec()
    assert spec.output_size == 224 and spec.crop_area == (0.6, 1.0) and spec.flip_p == 0.5
    assert spec.rotation_deg == 20 and spec.translate == 0.1 and spec.scale == (0.95, 1.05)
    assert spec.brightness == (0.6, 1.4) and spec.contrast == (0.6, 1.4) and spec.blur_sigma == (0.1, 3.0)
    assert spec.blur_kernel_size == 19


@pytest.mark.parametrize("bad", [dict(crop_area=(0.8, 0.6)), dict(crop_area=(0.0, 1.0)), dict(flip_p=1.5),
                                 dict(blur_sigma=(0.0, 1.0)), dict(scale=(1.0,)), dict(std=0.0)])
def test_spec_validation(bad):
    with pytest.raises(ValueError, match="augment"):
        AugmentSpec(**bad)


def test_spec_accepts_lists_from_config_files():
    assert AugmentSpec(crop_area=[0.5, 0.9]).crop_area == (0.5, 0.9)


# ----------------------------------------------------------------------------------------------
# Parameter distributions


def test_crop_matches_torchvision_random_resized_crop():
    from torchvision.transforms import RandomResizedCrop

    n, size = 3000, (191, 256)  # a wide image: the rejection step matters
    ours = draw(AugmentSpec(), n, size).crop
    torch.manual_seed(0)
    theirs = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, *size), (0.6, 1.0), (3 / 4, 4 / 3)) for _ in range(n)],
                          dtype=torch.float64)
    for column, name in [(2, "height"), (3, "width")]:
        assert stats.ks_2samp(ours[:, column], theirs[:, column]).pvalue > P_MIN, name
    area = lambda c: c[:, 2] * c[:, 3] / (size[0] * size[1])
    assert stats.ks_2samp(area(ours), area(theirs)).pvalue > P_MIN
    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= size[0]).all()
    assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= size[1]).all()


def test_affine_matches_torchvision_random_affine():
    from torchvision.transforms import RandomAffine

    n = 3000
    p = draw(AugmentSpec(), n)
    torch.manual_seed(0)
    theirs = [RandomAffine.get_params((-20.0, 20.0), (0.1, 0.1), (0.95, 1.05), None, [224, 224]) for _ in range(n)]
    assert stats.ks_2samp(p.angle, [t[0] for t in theirs]).pvalue > P_MIN
    assert stats.ks_2samp(p.translation[:, 0], [t[1][0] for t in theirs]).pvalue > P_MIN
    assert stats.ks_2samp(p.affine_scale, [t[2] for t in theirs]).pvalue > P_MIN


@pytest.mark.parametrize("field, low, high", [("angle", -20, 20), ("affine_scale", 0.95, 1.05),
                                              ("brightness", 0.6, 1.4), ("contrast", 0.6, 1.4)])
def test_uniform_parameters(field, low, high):
    values = getattr(draw(AugmentSpec()), field)
    assert low <= values.min() and values.max() <= high
    assert uniform_p(values, low, high) > P_MIN


def test_flip_and_blur_rates():
    p = draw(AugmentSpec(), 4000)
    assert stats.binomtest(int(p.flip.sum()), 4000, 0.5).pvalue > P_MIN
    blurred = p.blur_sigma > 0
    assert stats.binomtest(int(blurred.sum()), 4000, 0.5).pvalue > P_MIN
    assert uniform_p(p.blur_sigma[blurred], 0.1, 3.0) > P_MIN


def test_parameters_are_seeded():
    a, b, c = draw(AugmentSpec(), 64, seed=1), draw(AugmentSpec(), 64, seed=1), draw(AugmentSpec(), 64, seed=2)
    assert torch.equal(a.matrix, b.matrix) and torch.equal(a.blur_sigma, b.blur_sigma)
    assert not torch.equal(a.matrix, c.matrix)


# ----------------------------------------------------------------------------------------------
# What the images show: parameters recovered from augmented test patterns, other transforms off


def gradient(n, s, axis):
    ramp = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    img = ramp.view(1, s) if axis == "x" else ramp.view(s, 1)
    return img.expand(s, s).expand(n, 1, s, s).contiguous()


def test_crop_area_seen_in_images():
    n, s = 800, 448
    spec = only(crop_area=(0.6, 1.0), output_size=64)
    p = sample_params(torch.full((n,), s), torch.full((n,), s), spec, torch.Generator().manual_seed(3))
    # A horizontal ramp's value range in the output is the crop's horizontal extent.
    xs = augment_batch(gradient(n, s, "x"), p, spec, normalize=False)
    ys = augment_batch(gradient(n, s, "y"), p, spec, normalize=False)
    out = spec.output_size
    width = (xs.amax((1, 2, 3)) - xs.amin((1, 2, 3))) * out / (out - 1)
    height = (ys.amax((1, 2, 3)) - ys.amin((1, 2, 3))) * out / (out - 1)
    area = width * height
    # crop_ratio (3/4, 4/3) rejects some draws: compare with the drawn crops, whose
    # distribution test_crop_matches_torchvision_random_resized_crop checks.
    drawn = p.crop[:, 2] * p.crop[:, 3] / s**2
    assert torch.allclose(area.double(), drawn, atol=0.01)
    square = only(crop_area=(0.6, 1.0), crop_ratio=(1.0, 1.0), output_size=64)
    p = sample_params(torch.full((n,), s), torch.full((n,), s), square, torch.Generator().manual_seed(4))
    xs = augment_batch(gradient(n, s, "x"), p, square, normalize=False)
    side = (xs.amax((1, 2, 3)) - xs.amin((1, 2, 3))) * out / (out - 1)
    assert uniform_p(side.double() ** 2, 0.6, 1.0) > P_MIN


def test_flip_rate_seen_in_images():
    n, s = 2000, 32
    spec = only(flip_p=0.5, output_size=s)
    p = sample_params(torch.full((n,), s), torch.full((n,), s), spec, torch.Generator().manual_seed(5))
    out = augment_batch(gradient(n, s, "x"), p, spec, normalize=False)
    seen = out[..., 0].mean((1, 2)) > out[..., -1].mean((1, 2))  # bright on the left: flipped
    assert torch.equal(seen, p.flip)
    assert stats.binomtest(int(seen.sum()), n, 0.5).pvalue > P_MIN


def test_rotation_seen_in_images():
    n, s = 1000, 64
    spec = only(rotation_deg=20.0, output_size=s)
    p = sample_params(torch.full((n,), s), torch.full((n,), s), spec, torch.Generator().manual_seed(6))
    xs = augment_batch(gradient(n, s, "x"), p, spec, normalize=False)[:, 0]
    # Inside the central disk the output of a ramp is the plane a*x + b*y + c: the angle is
    # atan2(b, a). Fit it by least squares on those pixels.
    yy, xx = torch.meshgrid(torch.arange(s) + 0.5 - s / 2, torch.arange(s) + 0.5 - s / 2, indexing="ij")
    disk = (xx**2 + yy**2) < (0.3 * s) ** 2
    design = torch.stack([xx[disk], yy[disk], torch.ones_like(xx[disk])], 1).double()
    coef = torch.linalg.lstsq(design, xs[:, disk].double().T).solution  # (3, n)
    angle = torch.rad2deg(torch.atan2(coef[1], coef[0]))
    # One sign convention for every sample (which one is a convention: the range is symmetric).
    sign = torch.sign((angle * p.angle).sum())
    assert torch.allclose(angle, sign * p.angle, atol=0.5)
    assert uniform_p(angle, -20, 20) > P_MIN


def test_brightness_seen_in_images():
    n, s = 2000, 32
    spec = only(brightness=(0.6, 1.4), output_size=s)
    p = sample_params(torch.full((n,), s), torch.full((n,), s), spec, torch.Generator().manual_seed(7))
    images = 0.2 + 0.4 * gradient(n, s, "x")  # no clamping at x1.4
    out = augment_batch(images, p, spec, normalize=False)
    factor = out.mean((1, 2, 3)) / images.mean((1, 2, 3))
    assert torch.allclose(factor.double(), p.brightness, atol=1e-4)
    assert uniform_p(factor, 0.6, 1.4) > P_MIN


def test_contrast_keeps_the_mean_and_scales_the_spread():
    n, s = 500, 32
    spec = only(contrast=(0.6, 1.4), output_size=s)
    p = sample_params(torch.full((n,), s), torch.full((n,), s), spec, torch.Generator().manual_seed(8))
    images = 0.3 + 0.4 * gradient(n, s, "x")
    out = augment_batch(images, p, spec, normalize=False)
    assert torch.allclose(out.mean((1, 2, 3)), images.mean((1, 2, 3)), atol=1e-5)
    assert torch.allclose((out.std((1, 2, 3)) / images.std((1, 2, 3))).double(), p.contrast, atol=1e-4)


def test_blur_seen_in_images():
    n, s = 400, 64
    spec = only(blur_p=0.5, output_size=s)
    p = sample_params(torch.full((n,), s), torch.full((n,), s), spec, torch.Generator().manual_seed(9))
    impulse = torch.zeros(n, 1, s, s)
    impulse[:, :, s // 2, s // 2] = 1.0  # the identity geometry maps pixel centres exactly
    out = augment_batch(impulse, p, spec, normalize=False)[:, 0]
    profile = out.sum(1)  # the 1-D kernel along x
    x = torch.arange(s, dtype=torch.float64) - s // 2
    second_moment = (profile.double() * x**2).sum(1) / profile.double().sum(1)
    taps = torch.arange(spec.blur_kernel_size, dtype=torch.float64) - spec.blur_kernel_size // 2
    expected = (gaussian_kernels(p.blur_sigma, spec.blur_kernel_size) * taps**2).sum(1)
    expected = torch.where(p.blur_sigma > 0, expected, torch.zeros_like(expected))
    assert torch.allclose(second_moment, expected, atol=1e-3)
    # (a sigma near 0.1 is invisible: its neighbour weight is exp(-50))
    assert (second_moment[p.blur_sigma > 0.5] > 0.2).all() and (second_moment[p.blur_sigma == 0] < 1e-4).all()


def test_warp_is_exact_for_the_identity():
    images = torch.rand(3, 1, 40, 40)
    m = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64).expand(3, 2, 3)
    assert torch.allclose(warp(images, m, 40), images, atol=1e-6)


def test_eval_transform_pads_to_square():
    wide = torch.ones(1, 1, 100, 200)
    out = eval_batch(wide, eval_matrix(torch.tensor([100]), torch.tensor([200]), 224), AugmentSpec(), normalize=False)
    rows = out[0, 0].mean(1)
    assert rows[:50].max() < 0.02 and rows[-50:].max() < 0.02  # a quarter of zero padding above and below
    assert rows[60:164].min() > 0.98


# ----------------------------------------------------------------------------------------------
# Decoding


def test_sixteen_bit_png_keeps_its_precision(tmp_path):
    ramp = np.linspace(0, 65535, 256 * 200).astype(np.uint16).reshape(200, 256)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    pixels = read_image(path)
    assert pixels.dtype == np.uint16 and np.array_equal(pixels, ramp)
    canvas, h, w, max_value = pad_batch([pixels])
    assert max_value == MAX_16BIT
    spec = AugmentSpec.identity(output_size=128)
    out = eval_batch(to_unit_float(canvas, max_value), eval_matrix(h, w, 128), spec, normalize=False)
    assert len(torch.unique(out)) > 1000  # far more levels than 8 bits hold


@pytest.mark.parametrize("content, message", [(b"", "not a readable image"), (b"not an image at all", "not a readable image")])
def test_unreadable_images_name_the_file(tmp_path, content, message):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=f"broken.jpg.*{message}"):
        read_image(path)


def test_truncated_jpeg_is_an_image_error(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray((np.random.default_rng(0).random((256, 256)) * 255).astype(np.uint8)).save(good, quality=95)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert read_image(good).shape == (256, 256)
    with pytest.raises(ImageError, match="truncated.jpg"):
        read_image(bad)


def test_missing_image():
    with pytest.raises(ImageError, match="nowhere.png: image file not found"):
        read_image("/nowhere/nowhere.png")


def test_encoded_reads_and_batched_decode_match_the_worker_decode(tmp_path):
    """decode=gpu's pieces on the CPU: complete JPEGs travel as bytes, everything else decoded
    as read_image does; torchvision's batched JPEG decode gives read_image's pixels; the device
    canvas is pad_batch's."""
    rng = np.random.default_rng(0)
    gray = (rng.random((200, 256)) * 255).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.jpg", quality=90)
    Image.fromarray(np.stack([gray, gray[::-1], gray[:, ::-1]], -1)).save(tmp_path / "rgb.jpg", quality=90)
    Image.fromarray(gray).save(tmp_path / "eight.png")
    Image.fromarray(gray.astype(np.uint16) * 257 + 3).save(tmp_path / "deep.png")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "gray.jpg").read_bytes()[:3000])
    files = [tmp_path / n for n in ("gray.jpg", "rgb.jpg", "eight.png", "deep.png")]
    read = [read_encoded(f) for f in files]
    assert [r[0].ndim for r in read] == [1, 1, 2, 2] and all(r[1:] == (200, 256) for r in read)
    assert read[3][0].dtype == np.uint16 and int(read[3][0].max()) == int(gray.max()) * 257 + 3
    with pytest.raises(ImageError, match="truncated.jpg"):
        read_encoded(tmp_path / "truncated.jpg")
    decoded = decode_jpegs_on_device([torch.from_numpy(read[0][0]), torch.from_numpy(read[1][0])], torch.device("cpu"))
    assert decoded[0].dtype == torch.uint8 and torch.equal(decoded[0], torch.from_numpy(read_image(files[0]).copy()))
    # Colour: luma straight from the JPEG's Y channel vs PIL's luma of the decoded (and clipped)
    # RGB; close on average, a few levels apart where this noise image's chroma clips.
    assert (decoded[1].float() - torch.from_numpy(read_image(files[1]).copy()).float()).abs().mean() < 0.5
    others = [torch.from_numpy(read[2][0].copy()), torch.from_numpy(read[3][0].astype(np.int32))]
    canvas, max_value = pad_batch_on_device(decoded + others, torch.device("cpu"))
    expected, _, _, expected_max = pad_batch([read_image(files[0]), decoded[1].numpy(), read_image(files[2]),
                                              read_image(files[3])])
    assert max_value == expected_max == MAX_16BIT and torch.equal(canvas, expected)


def host_images():
    """Worker-decoded images of a mixed batch: 8-bit, 16-bit (int32) and 8-bit, odd sizes."""
    rng = np.random.default_rng(1)
    return [torch.from_numpy((rng.random((37, 53)) * 255).astype(np.uint8)),
            torch.from_numpy((rng.random((41, 29)) * 65535).astype(np.int32)),
            torch.from_numpy((rng.random((13, 61)) * 255).astype(np.uint8))]


def as_arrays(images):
    """`read_image`'s arrays for `host_images`: int32 ones back to uint16."""
    return [i.numpy().astype(np.uint16) if i.dtype == torch.int32 else i.numpy() for i in images]


def test_host_images_reach_the_device_in_one_copy(monkeypatch):
    import convirt_fast.data.image_decode as image_decode

    copies = []
    original = image_decode.host_to_device
    monkeypatch.setattr(image_decode, "host_to_device", lambda x, d: copies.append(x.shape) or original(x, d))
    images = host_images()
    canvas, max_value = pad_batch_on_device(images, torch.device("cpu"))
    expected, _, _, expected_max = pad_batch(as_arrays(images))
    assert copies == [(sum(i.numel() for i in images),)]
    assert max_value == expected_max == MAX_16BIT and torch.equal(canvas, expected)
    eight = [images[0], images[2]]  # no 16-bit image: uint8 canvas
    canvas, max_value = pad_batch_on_device(eight, torch.device("cpu"))
    assert canvas.dtype == torch.uint8 and max_value == 255 and torch.equal(canvas, pad_batch(as_arrays(eight))[0])


@pytest.mark.gpu
def test_host_images_go_to_the_gpu_through_pinned_memory(monkeypatch):
    """One pinned buffer for the batch's worker-decoded images, beside images already there."""
    import convirt_fast.data.image_decode as image_decode

    pinned = []
    original = image_decode.host_to_device
    monkeypatch.setattr(image_decode, "host_to_device", lambda x, d: pinned.append(x.is_pinned()) or original(x, d))
    images = host_images()
    on_device = [images[0].cuda(), images[1], images[2]]
    canvas, _ = pad_batch_on_device(on_device, torch.device("cuda"))
    torch.cuda.synchronize()
    expected = pad_batch(as_arrays(images))[0]
    assert pinned == [True] and canvas.is_cuda and torch.equal(canvas.cpu(), expected)


@pytest.mark.parametrize("limit", [30_000, 15_000], ids=["over_the_limit", "over_twice_the_limit"])
def test_decompression_bomb_limit_is_the_same_for_every_reader(tmp_path, monkeypatch, limit):
    """PIL warns over Image.MAX_IMAGE_PIXELS and raises over twice that; both are an ImageError
    with one message whether the image is decoded (workers), its header read for DALI, or its
    bytes queued for the GPU decoder."""
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(tmp_path / "large.jpg", quality=90)
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(tmp_path / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    for path in (tmp_path / "large.jpg", tmp_path / "large.png"):
        messages = []
        for reader in (read_image, read_encoded, image_size):
            with pytest.raises(ImageError, match="could be decompression bomb") as error:
                reader(path)
            messages.append(str(error.value))
        assert len(set(messages)) == 1 and messages[0].startswith(f"{path}: cannot decode image (Image size (40000")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)
    assert read_encoded(tmp_path / "large.jpg")[0].ndim == 1 and image_size(tmp_path / "large.jpg") == (200, 200)


@pytest.mark.gpu
def test_nvjpeg_decode_matches_the_cpu_decode(tmp_path):
    """nvJPEG (batched, on the GPU) against libjpeg-turbo on the same files; a corrupt JPEG in
    the batch raises RuntimeError (the loader then decodes the JPEGs one at a time to find it)."""
    y, x = np.mgrid[0:240, 0:256]
    smooth = (127 + 60 * np.sin(x / 17) * np.cos(y / 23) + (x + y) / 8).clip(0, 255).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "gray.jpg", quality=90)
    Image.fromarray(np.stack([smooth, smooth[::-1], smooth[:, ::-1]], -1)).save(
        tmp_path / "rgb.jpg", quality=90)
    files = [tmp_path / "gray.jpg", tmp_path / "rgb.jpg"]
    encoded = [torch.from_numpy(read_encoded(f)[0]) for f in files]
    gpu = decode_jpegs_on_device(encoded, torch.device("cuda"))
    cpu = decode_jpegs_on_device(encoded, torch.device("cpu"))
    for g, c in zip(gpu, cpu):
        assert g.is_cuda and g.shape == c.shape == (240, 256)
        diff = (g.cpu().int() - c.int()).abs()  # IDCT rounding may differ by a level or two
        assert diff.float().mean() < 1.0 and diff.max() <= 8
    assert torch.equal(cpu[0], torch.from_numpy(read_image(files[0]).copy()))
    corrupt = torch.cat([encoded[0][:2], torch.randint(0, 255, (500,), dtype=torch.uint8), encoded[0][-2:]])
    with pytest.raises(RuntimeError):
        decode_jpegs_on_device([encoded[0], corrupt], torch.device("cuda"))


# ----------------------------------------------------------------------------------------------
# DALI against torch, sample by sample (same parameters)


def real_images(shared_data, n=12):
    files = sorted((shared_data / "covid-cxr" / "images").glob("*"))[:n]
    if not files:
        pytest.skip("no covid-cxr images")
    return files


@needs_dali
@pytest.mark.parametrize("train", [True, False])
def test_dali_matches_torch_on_real_images(shared_data, train):
    files = real_images(shared_data)
    arrays = [read_image(f) for f in files]
    canvas, h, w, max_value = pad_batch(arrays)
    images = to_unit_float(canvas, max_value)
    spec = AugmentSpec()
    dali = DaliAugmenter(spec, len(files), device_id=None)
    encoded = [np.fromfile(f, dtype=np.uint8) for f in files]
    if train:
        p = sample_params(h, w, spec, torch.Generator().manual_seed(0))
        ours, theirs = augment_batch(images, p, spec), dali(encoded, p.matrix, p.brightness, p.contrast, p.blur_sigma)
    else:
        m = eval_matrix(h, w, spec.output_size)
        ours, theirs = eval_batch(images, m, spec), dali.evaluate(encoded, m)
    assert theirs.shape == ours.shape == (len(files), 1, 224, 224) and theirs.dtype == torch.float32
    diff = (ours - theirs).abs() * spec.std  # in [0, 1] pixel units
    assert diff.mean() < 1e-3 and diff.max() < 0.05
    assert abs(ours.mean() - theirs.mean()) < 1e-3 and abs(ours.std() - theirs.std()) < 1e-3


@needs_dali
def test_dali_keeps_sixteen_bits(tmp_path):
    ramp = np.linspace(0, 65535, 256 * 256).astype(np.uint16).reshape(256, 256)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    dali = DaliAugmenter(AugmentSpec.identity(output_size=128), 1, device_id=None, normalize=False)
    m = eval_matrix(torch.tensor([256]), torch.tensor([256]), 128)
    out = dali.evaluate([np.fromfile(tmp_path / "deep.png", dtype=np.uint8)], m)
    assert len(torch.unique(out)) > 1000


@needs_dali
def test_dali_rejects_oversized_batches():
    dali = DaliAugmenter(AugmentSpec(), 2, device_id=None)
    with pytest.raises(ValueError, match="batch of 3"):
        dali.evaluate([np.zeros(1, np.uint8)] * 3, torch.zeros(3, 2, 3))


@pytest.mark.gpu
def test_torch_backend_on_cuda_matches_cpu(shared_data):
    files = real_images(shared_data, 8)
    canvas, h, w, max_value = pad_batch([read_image(f) for f in files])
    spec = AugmentSpec()
    p = sample_params(h, w, spec, torch.Generator().manual_seed(0))
    cpu = augment_batch(to_unit_float(canvas, max_value), p, spec)
    gpu = augment_batch(to_unit_float(canvas.cuda(), max_value), p, spec)
    assert gpu.is_cuda and (gpu.cpu() - cpu).abs().max() < 1e-3
