"""`convirt_fast.load_pretrained` on a tiny trained run: a run folder, a checkpoint and an export
give the same model; the evaluation transform is the data pipeline's (PIL, uint8, uint16, files);
the README's example runs; paths that are none of these are refused, named."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convirt_fast
from conftest import tiny_trained_run
from convirt_fast.config import ModelConfig
from convirt_fast.data.augment import AugmentSpec
from convirt_fast.models import EXPORT_INFO_FILE, ConVIRTModel, EvalTransform, export_model
from convirt_fast.models.pretrained import run_checkpoint

SPEC = AugmentSpec(output_size=32, mean=0.45, std=0.23)
TEXTS = ["The heart is enlarged.", "No acute cardiopulmonary process.", "There is a small left pleural effusion."]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A 4-step pretraining run on SynthCXR n=60 (checkpoints, tokenizer, exports)."""
    return tiny_trained_run(tmp_path_factory.mktemp("pretrained-run"), SPEC)


@pytest.fixture(scope="module")
def manifest(run_dir):
    from convirt_fast.data.manifest import load_manifest

    cache = run_dir.parent.parent / "cache"
    return load_manifest(next(cache.glob("synthcxr-*")))


@pytest.fixture(scope="module")
def from_run(run_dir):
    return convirt_fast.load_pretrained(run_dir)


def _embeddings(p, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return p.model.image_features(images), p.model.encode_image(images), p.model.encode_text(TEXTS)


def test_run_folder_checkpoint_and_export_load_the_same_model(run_dir, from_run, manifest, tmp_path):
    checkpoint, _ = run_checkpoint(run_dir)
    alone = tmp_path / "copied_export"
    export_model(from_run.model, alone, model_config=ModelConfig(**from_run.config["model"]),
                 augment=from_run.augment, max_length=from_run.model.max_length)
    loads = {
        "run folder": from_run,
        "checkpoint": convirt_fast.load_pretrained(checkpoint),
        "export folder": convirt_fast.load_pretrained(run_dir / "export"),
        "export file": convirt_fast.load_pretrained(run_dir / "export" / "image_encoder.safetensors"),
        "export alone": convirt_fast.load_pretrained(alone),
    }
    images = torch.stack([from_run.transform(manifest.image_paths(r)[0]) for r in range(4)])
    expected = _embeddings(from_run, images)
    assert expected[1].shape == (4, 16) and expected[2].shape == (3, 16)
    for source, p in loads.items():
        assert not p.model.training and p.model.has_text and p.tokenizer is p.model.tokenizer, source
        assert p.augment == SPEC and p.model.max_length == 24, source
        for got, want in zip(_embeddings(p, images), expected):
            assert torch.equal(got, want), source
    assert loads["checkpoint"].source.startswith(str(checkpoint)) and loads["run folder"].config["data"]["max_length"] == 24
    assert {p.model.name for p in loads.values()} == {"run"}


def test_transform_is_the_evaluation_pipeline(from_run, manifest):
    """Prepared images through `transform` (by path) are exactly what the evaluation loader gives."""
    from convirt_fast.eval.embed import embed_images

    rows = list(range(6))
    expected = embed_images(lambda x: x.flatten(1), manifest, rows, spec=SPEC, device="cpu", batch_size=4)
    got = torch.stack([from_run.transform(manifest.image_paths(r)[0]).flatten() for r in rows])
    assert torch.equal(got, expected)


def test_transform_accepts_pil_uint8_and_uint16(tmp_path):
    transform = EvalTransform(SPEC)
    rng = np.random.default_rng(0)
    gray8 = rng.integers(0, 256, (48, 40), dtype=np.uint8)
    out = transform(gray8)
    assert out.shape == (1, 32, 32) and out.dtype == torch.float32
    # 8 bits, as PIL or array; 16 bits holding the same values x 257: one image.
    assert torch.equal(transform(Image.fromarray(gray8)), out)
    assert torch.equal(transform(gray8.astype(np.uint16) * 257), out)
    assert torch.equal(transform(Image.fromarray(gray8.astype(np.uint16) * 257)), out)  # PIL "I;16"
    assert torch.equal(transform(gray8[:, :, None]), out)
    # Colour: luminance as PIL converts it; 16-bit colour likewise (PIL's 8-bit luma is rounded
    # to a whole gray level, the 16-bit one is finer: within half a level).
    rgb8 = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    luma = np.asarray(Image.fromarray(rgb8).convert("L"))
    assert torch.equal(transform(rgb8), transform(luma))
    assert torch.equal(transform(Image.fromarray(rgb8)), transform(luma))
    rgba = np.concatenate([rgb8, np.full((48, 40, 1), 7, np.uint8)], axis=2)
    assert torch.equal(transform(rgba), transform(luma))
    half_level = 0.5 / 255 / SPEC.std + 1e-6
    torch.testing.assert_close(transform(rgb8.astype(np.uint16) * 257), transform(luma), atol=half_level, rtol=0)
    # 16 bits keep their precision: values no 8-bit image holds give a different tensor.
    fine = (gray8.astype(np.uint16) * 257 + 100).astype(np.uint16)
    assert not torch.equal(transform(fine), out)
    # A file (as prepare reads it) gives what its decoded image gives.
    Image.fromarray(gray8).save(tmp_path / "gray.png")
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    assert torch.equal(transform(tmp_path / "gray.png"), out)
    assert torch.equal(transform(str(tmp_path / "gray16.png")), out)
    for bad, error in ((gray8.astype(np.float32), TypeError), (rng.integers(0, 9, (4, 4, 2), dtype=np.uint8), ValueError),
                       ([1, 2], TypeError)):
        with pytest.raises(error):
            transform(bad)
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        transform(tmp_path / "nothing.png")


def test_transform_resizes_large_images_as_prepare_does(tmp_path):
    """An image larger than prepare's 256 px is first resized as prepare resizes it, so a raw
    radiograph and its prepared copy give the same input."""
    from convirt_fast.data.resize import decode_resized

    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (600, 450), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    prepared = np.asarray(decode_resized(tmp_path / "big.png"))
    assert prepared.shape == (256, 192)
    transform = EvalTransform(SPEC)
    assert torch.equal(transform(big), transform(prepared))
    assert torch.equal(transform(tmp_path / "big.png"), transform(prepared))
    assert not torch.equal(EvalTransform(SPEC, long_side=None)(big), transform(prepared))
    big16 = big.astype(np.uint16) * 257
    torch.testing.assert_close(transform(big16), transform(prepared), atol=2e-2, rtol=0)


def test_readme_example_runs(run_dir, manifest, tmp_path, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("**Use a pretrained encoder**"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) == 5
    chest = tmp_path / "chest.jpg"
    Image.open(manifest.image_paths(0)[0]).convert("L").save(chest)
    code = code.replace('"runs/cpu-default-20261130-120000"', repr(str(run_dir))).replace('"chest.jpg"', repr(str(chest)))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    scores = namespace["p"].zero_shot(namespace["image"], ["No acute cardiopulmonary process.", "The heart is enlarged."])
    assert printed.strip() == str(scores)
    assert list(scores) == sorted(scores, key=lambda t: -scores[t]) and all(-1 <= s <= 1 for s in scores.values())


def test_zero_shot_and_similarity(from_run, manifest):
    p = from_run
    images = torch.stack([p.transform(manifest.image_paths(r)[0]) for r in range(3)])
    with torch.no_grad():
        embeddings = p.model.encode_image(images)
    similarity = p.similarity(embeddings, TEXTS)
    assert similarity.shape == (3, 3) and similarity.abs().max() <= 1 + 1e-6
    assert torch.allclose(p.similarity(images, TEXTS), similarity)  # images are encoded first
    first = p.zero_shot(images[0], TEXTS)  # a transformed image works as well as its embedding
    assert first == p.zero_shot(embeddings[:1], TEXTS) == p.zero_shot(embeddings[0], TEXTS)
    assert list(first.values()) == sorted(first.values(), reverse=True)
    assert first[TEXTS[0]] == pytest.approx(similarity[0, 0].item(), abs=1e-4)
    with pytest.raises(ValueError, match="one image"):
        p.zero_shot(embeddings, TEXTS)


def test_image_only_export(run_dir, tmp_path):
    """An export of the image side alone (with its description): an image-only model."""
    alone = tmp_path / "image_only"
    p = convirt_fast.load_pretrained(run_dir / "export")
    export_model(ConVIRTModel(copy.deepcopy(p.model.image_encoder), name="run"), alone,
                 model_config=ModelConfig(image_encoder="resnet18", channels_last=False), augment=SPEC)
    only = convirt_fast.load_pretrained(alone)
    assert not only.model.has_text and only.tokenizer is None
    image = only.transform(np.zeros((40, 40), np.uint8))[None]
    with torch.no_grad():
        assert torch.equal(only.model.encode_image(image), p.model.image_features(image))
    with pytest.raises(RuntimeError, match="no text side"):
        only.zero_shot(image, TEXTS)


def test_unusable_paths_are_named(run_dir, tmp_path):
    from convirt_fast.io import CheckpointError

    with pytest.raises(FileNotFoundError, match="no_such_run"):
        convirt_fast.load_pretrained(tmp_path / "no_such_run")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty: neither a run folder .* nor an export folder"):
        convirt_fast.load_pretrained(empty)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes.txt: not a run checkpoint"):
        convirt_fast.load_pretrained(tmp_path / "notes.txt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        convirt_fast.load_pretrained(tmp_path / "junk.pt")
    # An export copied without its description: the transform is unknown, and it says so.
    bare = tmp_path / "bare_export"
    shutil.copytree(run_dir / "export", bare)
    (bare / EXPORT_INFO_FILE).unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"bare_export: an export without convirt.json"):
        convirt_fast.load_pretrained(bare)


def test_run_folder_without_checkpoints_loads_its_export(run_dir, from_run, manifest, tmp_path):
    slim = tmp_path / "slim_run"
    shutil.copytree(run_dir / "export", slim / "export")
    shutil.copy(run_dir / "config.json", slim / "config.json")
    p = convirt_fast.load_pretrained(slim)
    assert p.source == str(slim / "export") and p.augment == SPEC
    images = torch.stack([from_run.transform(manifest.image_paths(r)[0]) for r in range(2)])
    for got, want in zip(_embeddings(p, images), _embeddings(from_run, images)):
        assert torch.equal(got, want)
