"""The run's lifecycle outside the loop: the tokenizer prepared with the data, the Checkpointer
over stateful objects, post-training from the run folder alone, config defaults = their preset,
and the C++ seeded choice the sampler uses."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from convirt_fast.checkpoint import Checkpointer, TrainProgress
from convirt_fast.config import Config
from convirt_fast.data.manifest import load_manifest
from convirt_fast.io import CHECKPOINT_FORMAT, CheckpointError, atomic_torch_save, load_checkpoint
from convirt_fast.prepare.synthetic import ensure_synthcxr
from convirt_fast.prepare.tokenizer import build_tokenizer, ensure_tokenizer, tokenizer_dir


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_manifest(ensure_synthcxr(cache, n=60, seed=0, size=64, workers=1, progress=False))


def test_prepare_builds_the_tokenizer_into_the_folder(tmp_path):
    from convirt_fast.prepare.__main__ import main
    from convirt_fast.text import SentenceIndex
    from convirt_fast.text.tokenizer import load_tokenizer, train_wordpiece

    out = tmp_path / "synth"
    assert main(["synthetic", "--n", "40", "--size", "64", "--out", str(out), "--workers", "1", "--no-progress",
                 "--vocab-size", "300"]) == 0
    folder = tokenizer_dir(out, 300)
    assert (folder / "tokenizer.json").is_file()
    # The vocabulary is that of the training sentences, nothing else.
    manifest = load_manifest(out)
    index = SentenceIndex.load(manifest.sentence_index_path)
    expected = train_wordpiece((s for r in manifest.split_indices("train") for s in index.sentences(r)), vocab_size=300)
    assert load_tokenizer(folder).get_vocab() == expected.get_vocab()
    assert main(["tokenizer", str(out), "--vocab-size", "200"]) == 0
    assert len(load_tokenizer(tokenizer_dir(out, 200)).get_vocab()) <= 200


def test_ensure_tokenizer_builds_once_and_reuses(synth):
    folder = ensure_tokenizer(synth, 250)
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns
    assert ensure_tokenizer(synth, 250) == folder
    assert (folder / "tokenizer.json").stat().st_mtime_ns == stamp  # not rebuilt
    rebuilt = build_tokenizer(synth, 251)
    assert rebuilt != folder and (rebuilt / "tokenizer.json").is_file()


def test_ensure_tokenizer_where_it_cannot_write_says_what_to_do(tmp_path, synth):
    copy = tmp_path / "unwritable"
    shutil.copytree(synth.root, copy, ignore=shutil.ignore_patterns("tokenizers"))
    (copy / "tokenizers").write_text("")  # a file where the folder would go: mkdir fails, as in a read-only mount
    with pytest.raises(RuntimeError, match=r"unwritable: no tokenizers/wordpiece-300 .*prepare tokenizer"):
        ensure_tokenizer(load_manifest(copy), 300)


class Box:
    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_checkpointer_saves_and_restores_every_object(tmp_path):
    progress = TrainProgress(step=7, validations=2, skipped_nonfinite=1)
    a, b = Box(torch.arange(3)), Box("x")
    ckpt = Checkpointer(tmp_path, model=a, b=b, progress=progress)
    ckpt.save(7, {"model": {}}, best=True)
    assert ckpt.best.exists() and load_checkpoint(ckpt.last)["step"] == 7
    a.value, b.value, progress.step = None, None, 0
    ckpt.load(ckpt.last)
    assert torch.equal(a.value, torch.arange(3)) and b.value == "x" and progress.step == 7
    with pytest.raises(CheckpointError, match=r"lacks \['c'\]"):
        Checkpointer(tmp_path, model=Box(0), c=Box(0)).load(ckpt.last)

    class Picky(Box):
        def load_state_dict(self, state):
            raise KeyError("weight")

    with pytest.raises(CheckpointError, match="its model state does not fit"):
        Checkpointer(tmp_path, model=Picky(0)).load(ckpt.last)


def test_checkpoint_of_the_previous_layout_still_loads(tmp_path):
    """Counters were top-level keys before TrainProgress; such a checkpoint resumes."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "step": 5, "config": {}, "model": {}, "validations": 1,
                       "best_val": 2.5, "skipped_nonfinite": 0}, tmp_path / "last.pt")
    progress = TrainProgress()
    Checkpointer(tmp_path, progress=progress).load(tmp_path / "last.pt")
    assert (progress.step, progress.validations, progress.skipped_nonfinite) == (5, 1, 0)


def test_post_train_reruns_from_the_folder_alone(tmp_path, synth):
    from convirt_fast.post_train import post_train
    from convirt_fast.trainer import Trainer

    cfg = Config.from_dict({**Config().to_dict(), "preset": "test"})
    cfg.model.image_encoder, cfg.model.text_layers, cfg.model.text_hidden, cfg.model.text_heads = "resnet18", 2, 32, 2
    cfg.model.vocab_size, cfg.model.freeze_text_layers, cfg.model.projection_dim = 300, 0, 16
    cfg.data.path, cfg.data.batch_size, cfg.data.num_workers, cfg.data.backend = str(synth.root), 4, 0, "torch"
    cfg.data.augment.output_size = 32
    cfg.train.max_steps, cfg.train.val_every, cfg.train.checkpoint_every = 3, 3, 3
    cfg.train.out_dir, cfg.train.run_name, cfg.train.progress = str(tmp_path), "run", False
    trainer = Trainer(cfg)
    first = post_train(trainer.run_dir, trainer.fit())
    run = tmp_path / "run"
    # The run folder holds the tokenizer it trained with: the prepared folder's.
    assert json.loads((run / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"] == json.loads(
        (tokenizer_dir(synth.root, 300) / "tokenizer.json").read_text())["model"]["vocab"]
    assert (run / "export" / "convirt.json").is_file()  # the export describes itself
    again = post_train(run, {"steps": first["steps"]})
    assert again["retrieval"] == first["retrieval"] and again["evaluated_checkpoint"] == "best (step 3)"
    assert json.loads((run / "summary.json").read_text())["retrieval"] == first["retrieval"]


def test_config_defaults_are_the_papers_recipe():
    """Config() is the mimic-paper preset (presets.mimic_paper returns Config() itself); its values
    are checked against ../shared/PAPER.md's numbers one by one, so that a changed default cannot
    pass unnoticed."""
    cfg = Config()
    m, d, a = cfg.model, cfg.data, cfg.data.augment
    assert cfg.preset == "mimic-paper"
    # ResNet-50; BERT-base with embeddings and the first 6 of 12 layers frozen; MLP heads to 512
    assert (m.image_encoder, m.text_layers, m.text_hidden, m.text_heads) == ("resnet50", 12, 768, 12)
    assert (m.freeze_text_layers, m.projection, m.projection_dim) == (6, "mlp", 512)
    # t_v: crop area [0.6, 1], flip 0.5, rotation 20, translation 0.1, scale [0.95, 1.05],
    # brightness and contrast [0.6, 1.4], blur sigma [0.1, 3.0], 224 px
    assert (tuple(a.crop_area), a.flip_p, a.rotation_deg, a.translate, tuple(a.scale)) == ((0.6, 1.0), 0.5, 20.0, 0.1,
                                                                                            (0.95, 1.05))
    assert (tuple(a.brightness), tuple(a.contrast), tuple(a.blur_sigma), a.output_size) == ((0.6, 1.4), (0.6, 1.4),
                                                                                             (0.1, 3.0), 224)
    # lambda 0.75, tau 0.1 (fixed), batch 32, Adam lr 1e-4, weight decay 1e-6
    assert (cfg.loss.tau, cfg.loss.lam, cfg.loss.learnable_tau, d.batch_size) == (0.1, 0.75, False, 32)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-4, 1e-6)
    # validation every 5,000 steps, lr halved after 5 flat validations, stop after 200
    assert (cfg.train.val_every, cfg.optim.schedule, cfg.optim.plateau_patience, cfg.optim.plateau_factor,
            cfg.train.max_validations) == (5000, "plateau", 5, 0.5, 200)


def test_cpp_sample_choice_matches_the_reference():
    from convirt_fast.text import reference
    from convirt_fast.text.ops import sample_choice, splitmix64

    rng = random.Random(0)
    for _ in range(2000):
        key = [rng.getrandbits(70) - (1 << 68) for _ in range(4)]  # negative and > 64-bit too
        count = rng.randint(1, 10**6)
        assert sample_choice(*key, count) == reference.sample_choice(*key, count)
        assert splitmix64(key[0]) == reference.splitmix64(key[0] & ((1 << 64) - 1))
    with pytest.raises(ValueError, match="count"):
        sample_choice(0, 0, 0, 0, 0)
