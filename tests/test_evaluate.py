"""The evaluation suite end to end on a tiny SynthCXR run, encoder loading, task definition, and
retrieval on the covid-cxr real set (`finding` as category)."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_trained_run
from convirt_fast.config import Config
from convirt_fast.data.augment import AugmentSpec
from convirt_fast.data.manifest import Manifest, Study
from convirt_fast.eval.encoders import load_encoder
from convirt_fast.eval.retrieval import evaluate_retrieval, read_retrieval_csv
from convirt_fast.eval.tasks import build_task
from convirt_fast.evaluate import main

SPEC = AugmentSpec(output_size=32)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 4-step pretraining run on SynthCXR n=60 (checkpoints, tokenizer, exports)."""
    return tiny_trained_run(tmp_path_factory.mktemp("eval-run"), SPEC)


def test_task_all_on_tiny_synthcxr(run_dir, tmp_path):
    out = tmp_path / "report"
    code = main(["--checkpoint", str(run_dir), "--init", "random", "--task", "all", "--seeds", "2",
                 "--finetune-epochs", "1", "--finetune-max-steps", "2", "--finetune-warmup-steps", "1",
                 "--finetune-seeds", "1", "--batch-size", "16", "--workers", "0", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    labels = results["task"]["labels"]
    assert results["task"]["kind"] == "multi-label" and len(labels) == 8
    assert results["task"]["test_split"] == "retrieval"  # SynthCXR has no test split
    run, random_init = results["encoders"]
    assert random_init["name"].startswith("random")
    for encoder in (run, random_init):
        r = encoder["results"]
        assert list(r["linear"]) == ["1%", "10%", "100%"] == list(r["finetune"])
        for key, runs in (("linear", 2), ("finetune", 1)):
            for entry in r[key].values():
                assert len(entry["runs"]) == runs and 0 <= entry["mean"] <= 1
                assert set(entry["per_label"]) == set(labels)
        # 54 studies in batches of 16: --finetune-max-steps 2 ends the first epoch early.
        assert all(run_["steps"] == 2 and run_["epochs"] == 1 for run_ in r["finetune"]["100%"]["runs"])
        # 1% of 54 studies is 1, raised so that every label has a positive and a negative.
        assert all(run_["n_train"] > 1 for run_ in r["linear"]["1%"]["runs"])
        for k in ("P@5", "P@10", "P@50"):
            assert 0 <= r["retrieval"]["image_to_image"]["overall"][k] <= 1
    assert "text_to_image" in run["results"]["retrieval"] and "zeroshot" in run["results"]
    assert "text_to_image" not in random_init["results"]["retrieval"] and "zeroshot" not in random_init["results"]
    top = run["results"]["retrieval"]["text_top"]
    assert len(top) == 40 and all(len(q["results"]) == 5 for q in top)
    assert all(q["results"][0]["hit"] == (q["results"][0]["category"] == q["category"]) for q in top)
    report = (out / "report.md").read_text()
    assert "| init | linear probe 1% | linear probe 10% | linear probe 100% | fine-tune 1%" in report
    assert "The cardiac silhouette is enlarged." in report  # the prompts used are printed
    for name in ("label_efficiency.png", "retrieval_grid_run.png"):
        assert (out / name).stat().st_size > 10_000


def test_encoder_sources_agree(run_dir, tmp_path):
    """Checkpoint, run folder and export (with the image projection and text folder beside it)
    rank alike, all ConVIRTModels; they rank as the trainer's model does; the image encoder file
    alone is the image side only, and an export folder loads as its image_encoder.safetensors."""
    from convirt_fast.io import load_checkpoint
    from convirt_fast.data.manifest import load_manifest
    from convirt_fast.models import ConVIRTModel, build_model

    from_folder = load_encoder(str(run_dir))
    from_export = load_encoder(str(run_dir / "export" / "image_encoder.safetensors"))
    assert from_folder.encoder.has_text and from_export.encoder.has_text
    assert isinstance(from_folder.encoder, ConVIRTModel) and isinstance(from_export.encoder, ConVIRTModel)
    assert from_folder.encoder.name == from_export.encoder.name == "run" and from_folder.encoder.max_length == 24
    assert load_encoder(str(run_dir / "export")).source == from_export.source
    # Folders are read as load_pretrained reads them: a run folder whose checkpoints were deleted
    # loads its export/, and a folder with neither is refused by name.
    stripped = tmp_path / "run_without_checkpoints"
    shutil.copytree(run_dir, stripped, ignore=shutil.ignore_patterns("checkpoints"))
    assert load_encoder(str(stripped)).source == load_encoder(str(stripped / "export")).source
    with pytest.raises(ValueError, match="neither a run folder"):
        load_encoder(str(tmp_path))
    images = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_folder.encoder.image_features(images), from_export.encoder.image_features(images))
        assert torch.equal(from_folder.encoder.encode_image(images), from_export.encoder.encode_image(images))
    alone = tmp_path / "image_encoder.safetensors"
    shutil.copy(run_dir / "export" / alone.name, alone)
    image_only = load_encoder(str(alone)).encoder
    assert not image_only.has_text and image_only.image_projection is None
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    cfg = Config.from_dict(state["config"])
    model, tokenizer = build_model(cfg.model, tokenizer=from_folder.encoder.tokenizer)
    model.load_state_dict(state["model"])
    manifest = load_manifest(Path(cfg.data.cache_dir) / next(Path(cfg.data.cache_dir).glob("synthcxr-*")).name)
    a = evaluate_retrieval(model, manifest, tokenizer, device="cpu", spec=SPEC)
    b = evaluate_retrieval(from_folder.encoder, manifest, tokenizer, device="cpu", spec=SPEC)
    c = evaluate_retrieval(from_export.encoder, manifest, from_export.encoder.tokenizer, device="cpu", spec=SPEC)
    assert a == b == c and "text_to_image" in c


def test_init_weights_file(tmp_path):
    import torchvision

    path = tmp_path / "rgb_resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)  # three-channel stem, with fc
    loaded = load_encoder(str(path), arch="resnet18")
    assert loaded.encoder.image_features(torch.randn(2, 1, 32, 32)).shape == (2, 512)
    with pytest.raises(ValueError, match="rgb_resnet18.pth"):
        load_encoder(str(path), arch="resnet50")


def _manifest(rows, labels=("a", "b", "c")) -> Manifest:
    studies = [Study(f"s{i}", f"p{i}", split, ("x.png",), "", dict(zip(labels, values)))
               for i, (split, values) in enumerate(rows)]
    return Manifest(Path("/nowhere"), studies, tuple(labels), {})


def test_task_multilabel_policy():
    m = _manifest([("train", (1, -1, None)), ("train", (0, 1, 1)), ("validate", (1, 0, 0)), ("test", (-1, None, 1))])
    task = build_task(m)
    assert task.kind == "multi-label"
    assert task.y([0]).tolist()[0][:2] == [1.0, 0.0] and math.isnan(task.y([0])[0, 2])  # U-zeros, blank ignored
    assert (task.train_rows, task.val_rows, task.test_rows) == ([0, 1], [2], [3])


def test_task_multiclass_and_missing_validate():
    rows = [("train", (1, 0, 0)), ("train", (0, 1, 0)), ("train", (0, 0, 1))] * 10 + [("test", (0, 1, 0)),
                                                                                     ("test", (1, 1, 0))]
    task = build_task(_manifest(rows))
    assert task.kind == "multi-class"
    assert task.test_rows == [30]  # the test study with two positives is left out, and said so
    assert len(task.val_rows) == 3 and not set(task.val_rows) & set(task.train_rows)
    assert any("held out" in n for n in task.notes) and any("left out" in n for n in task.notes)
    with pytest.raises(ValueError, match="no label columns"):
        build_task(_manifest([("train", ())], labels=()))


def test_retrieval_csv_errors(tmp_path):
    bad = tmp_path / "set.csv"
    bad.write_text("image,label\nx.png,a\n")
    with pytest.raises(ValueError, match=r"set\.csv: missing columns \['category'\]"):
        read_retrieval_csv(bad)
    bad.write_text("image,category\nmissing.png,a\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_retrieval_csv(bad)
    assert main(["--checkpoint", str(tmp_path / "nothing"), "--task", "retrieval"]) == 2


def test_covid_cxr_retrieval_by_finding(shared_data, run_dir):
    pairs = shared_data / "covid-cxr" / "pairs.csv"
    if not pairs.is_file():
        pytest.skip(f"{pairs} absent")
    manifest, rs = read_retrieval_csv(pairs, category_col="finding")
    assert rs.leave_one_out and len(rs.candidate_rows) == len(manifest) == 266
    encoder = load_encoder(str(run_dir / "export" / "image_encoder.safetensors")).encoder
    result = evaluate_retrieval(encoder, manifest, None, device="cpu", spec=SPEC, retrieval_set=rs)
    counts = np.unique(rs.candidate_labels, return_counts=True)[1]
    assert result["chance"] == pytest.approx((counts ** 2).sum() / 266 ** 2, abs=1e-4)
    assert set(result["image_to_image"]["per_category"]) == set(rs.candidate_labels)
    assert "COVID-19" in result["image_to_image"]["per_category"]
    p10 = result["image_to_image"]["overall"]["P@10"]
    assert 0 < p10 <= 1 and "text_to_image" not in result
