"""Models: shapes, masked max-pool, freezing, image weights (formats, stems, errors), exports
that load into torchvision / transformers, the factory. CPU, tiny sizes (resnet18 at 64x64, a
2-layer BERT of width 64)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

from convirt_fast.config import ModelConfig
from convirt_fast.models import (
    ConVIRTModel,
    Projection,
    build_bert,
    build_image_encoder,
    build_model,
    expand_stem,
    export_image_encoder,
    export_text_encoder,
    freeze_bert,
    load_bert,
    load_image_weights,
    load_text_encoder,
    masked_max_pool,
)
from convirt_fast.text.tokenizer import train_wordpiece

TINY = ModelConfig(image_encoder="resnet18", text_layers=2, text_hidden=64, text_heads=2, vocab_size=300,
                   freeze_text_layers=1, channels_last=False)

_FINDINGS = ["heart size is normal", "there is a small left pleural effusion", "no pneumothorax is seen",
             "the lungs are clear", "mild pulmonary edema", "right lower lobe atelectasis",
             "cardiac silhouette is enlarged", "no acute fracture", "patchy opacity concerning for pneumonia",
             "stable mediastinal contours"]


def _corpus(n: int = 50) -> list[str]:
    rng = random.Random(0)
    return [f"{rng.choice(_FINDINGS)} and {rng.choice(_FINDINGS)}." for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(_corpus(), vocab_size=TINY.vocab_size)


@pytest.fixture(scope="module")
def model(tokenizer) -> ConVIRTModel:
    torch.manual_seed(0)
    m, tok = build_model(TINY, tokenizer=tokenizer)
    assert tok is tokenizer
    return m.eval()


def _tokens(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def _gray(batch: int = 2, side: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, side, side, generator=torch.Generator().manual_seed(seed))


def _torchvision_resnet18(seed: int = 3) -> torchvision.models.ResNet:
    """A torchvision resnet18 with random weights and non-trivial BatchNorm statistics (so that
    a test comparing features also checks the buffers came along)."""
    torch.manual_seed(seed)
    m = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for bn in (mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


# -- forward ------------------------------------------------------------------------------------


def test_forward_shapes_and_keys(model, tokenizer):
    tokens = _tokens(tokenizer, ["heart size is normal.", "no pneumothorax is seen and the lungs are clear."])
    images = _gray()
    with torch.no_grad():
        out = model(images, tokens["input_ids"], tokens["attention_mask"])
        v = model.encode_image(images)
        u = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    assert set(out) == {"image", "text", "image_features", "text_features"}
    assert out["image"].shape == out["text"].shape == (2, TINY.projection_dim)
    assert out["image_features"].shape == (2, 512)  # resnet18's pooled width
    assert out["text_features"].shape == (2, TINY.text_hidden)
    torch.testing.assert_close(v, out["image"])
    torch.testing.assert_close(u, out["text"])
    # Unnormalised: the loss normalises, the model must not.
    assert not torch.allclose(v.norm(dim=1), torch.ones(2))


def test_projection_kinds():
    mlp, linear = Projection(10, 7, hidden=5), Projection(10, 7, kind="linear")
    assert [type(m) for m in mlp] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert mlp[0].out_features == 5 and mlp[2].out_features == 7
    assert len(linear) == 1 and linear(torch.randn(3, 10)).shape == (3, 7)
    assert Projection(10, 7)[0].out_features == 10  # hidden defaults to the input width
    with pytest.raises(ValueError, match="mlp or linear"):
        Projection(10, 7, kind="conv")


def test_masked_max_pool_unit():
    hidden = torch.tensor([[[1.0, -5.0], [3.0, -2.0], [100.0, 100.0]],
                           [[-7.0, -8.0], [50.0, 60.0], [70.0, 80.0]],
                           [[9.0, 9.0], [9.0, 9.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    expected = torch.tensor([[3.0, -2.0], [-7.0, -8.0], [0.0, 0.0]])  # all-padding row -> zeros
    torch.testing.assert_close(masked_max_pool(hidden, mask), expected)
    torch.testing.assert_close(masked_max_pool(hidden.bfloat16(), mask), expected.bfloat16())


def test_max_pool_ignores_padding(model, tokenizer):
    short, long = "heart size is normal.", "there is a small left pleural effusion and mild pulmonary edema."
    tokens = _tokens(tokenizer, [short, long])
    mask = tokens["attention_mask"]
    assert (mask[0] == 0).any(), "the short sentence must be padded for this test"
    scrambled = tokens["input_ids"].clone()
    scrambled[mask == 0] = torch.randint(5, len(tokenizer), (int((mask == 0).sum()),))
    alone = _tokens(tokenizer, [short])
    with torch.no_grad():
        base = model.text_features(tokens["input_ids"], mask)
        changed = model.text_features(scrambled, mask)
        unpadded = model.text_features(alone["input_ids"], alone["attention_mask"])
    torch.testing.assert_close(changed, base)
    torch.testing.assert_close(base[:1], unpadded, atol=1e-5, rtol=1e-5)
    # ...while a change to a real token does change the output (the test can fail).
    edited = tokens["input_ids"].clone()
    edited[0, 1] = (edited[0, 1] + 7) % len(tokenizer)
    with torch.no_grad():
        assert not torch.allclose(model.text_features(edited, mask)[0], base[0])


# -- freezing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_prepared_attention_mask_matches_transformers_own(implementation):
    """pooled_text_features hands BERT a ready 4-D mask (no host read in transformers' mask code);
    the features must equal those of BERT's own 2-D mask handling, padding in several rows."""
    from convirt_fast.models.text_encoder import build_bert, pooled_text_features

    torch.manual_seed(0)
    bert = build_bert(vocab_size=100, layers=2, hidden=32, heads=2).eval()
    bert.config._attn_implementation = implementation
    ids = torch.randint(1, 100, (4, 11))
    mask = torch.ones(4, 11, dtype=torch.long)
    mask[0, 7:], mask[2, 3:] = 0, 0
    expected = masked_max_pool(bert(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
    torch.testing.assert_close(pooled_text_features(bert, ids, mask), expected, rtol=1e-6, atol=1e-6)


def test_frozen_layers_get_no_grad(tokenizer):
    torch.manual_seed(0)
    m, _ = build_model(TINY, tokenizer=tokenizer)
    bert = m.text_encoder
    frozen = [bert.embeddings, bert.encoder.layer[0]]
    trainable = [bert.encoder.layer[1], m.text_projection, m.image_encoder, m.image_projection]
    assert all(not p.requires_grad for mod in frozen for p in mod.parameters())
    assert all(p.requires_grad for mod in trainable for p in mod.parameters())
    m.train()
    tokens = _tokens(tokenizer, ["heart size is normal.", "no acute fracture."])
    out = m(_gray(), tokens["input_ids"], tokens["attention_mask"])
    (out["image"].square().sum() + out["text"].square().sum()).backward()
    assert all(p.grad is None for mod in frozen for p in mod.parameters())
    for mod in trainable:
        grads = [p.grad for p in mod.parameters()]
        assert all(g is not None for g in grads), type(mod).__name__
        assert any(g.abs().sum() > 0 for g in grads), type(mod).__name__


def test_frozen_layers_stay_in_eval_mode(tokenizer):
    m, _ = build_model(TINY, tokenizer=tokenizer)
    bert = m.text_encoder
    for _ in range(2):  # train -> eval -> train keeps the rule
        m.train()
        assert not bert.embeddings.training and not bert.encoder.layer[0].training
        assert bert.encoder.layer[1].training and m.image_encoder.training and m.text_projection.training
        m.eval()
        assert not any(mod.training for mod in m.modules())


def test_freeze_bounds():
    bert = build_bert(vocab_size=50, layers=2, hidden=32, heads=2)
    with pytest.raises(ValueError, match="freeze_text_layers=3 outside 0..2"):
        freeze_bert(bert, 3)
    freeze_bert(bert, 0)  # nothing, embeddings included
    assert all(p.requires_grad for p in bert.parameters())
    freeze_bert(bert, 1)
    assert not any(p.requires_grad for p in bert.embeddings.parameters())
    assert not any(p.requires_grad for p in bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in bert.encoder.layer[1].parameters())


# -- image weights ------------------------------------------------------------------------------


def test_three_channel_stem_is_summed(tmp_path):
    rgb = _torchvision_resnet18()
    path = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), path)
    gray_model = build_image_encoder("resnet18")
    load_image_weights(gray_model, path)
    gray_model.eval()
    x = _gray()
    with torch.no_grad():
        torch.testing.assert_close(gray_model.conv1(x), rgb.conv1(x.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-5)
        rgb.fc = torch.nn.Identity()
        torch.testing.assert_close(gray_model(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def rgb_state() -> dict[str, torch.Tensor]:
    return _torchvision_resnet18().state_dict()


# Each format, fc choice and prefix at least twice, without the full (slower) cross product.
@pytest.mark.parametrize("fmt, with_fc, prefix", [
    ("pth", True, ""), ("safetensors", False, ""), ("pth", False, "module."), ("safetensors", True, "module."),
    ("safetensors", True, "image_encoder."), ("pth", False, "image_encoder."), ("pth", True, "module._orig_mod."),
])
def test_load_formats_and_prefixes(tmp_path, rgb_state, fmt, with_fc, prefix):
    source = rgb_state
    state = {prefix + k: v for k, v in source.items() if with_fc or not k.startswith("fc.")}
    if prefix == "image_encoder.":  # a whole ConVIRT state dict: the other branches are dropped
        state["text_encoder.embeddings.word_embeddings.weight"] = torch.zeros(3, 4)
        state["image_projection.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / f"weights.{fmt}"
    if fmt == "pth":
        torch.save({"state_dict": state, "epoch": 3} if prefix == "module." else state, path)
    else:
        save_file(state, path)
    encoder = build_image_encoder("resnet18")
    load_image_weights(encoder, path)
    loaded = encoder.state_dict()
    torch.testing.assert_close(loaded["conv1.weight"], source["conv1.weight"].sum(1, keepdim=True))
    for key in ("layer4.1.conv2.weight", "layer2.0.downsample.1.running_var", "bn1.num_batches_tracked"):
        torch.testing.assert_close(loaded[key], source[key])


def test_one_channel_weights_load_as_is(tmp_path, model):
    path = export_image_encoder(model, tmp_path / "enc.safetensors")
    fresh = build_image_encoder("resnet18")
    load_image_weights(fresh, path)
    for key, value in model.image_encoder.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)


def test_weight_errors_name_the_file(tmp_path, rgb_state):
    encoder = build_image_encoder("resnet18")
    wrong_arch = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong_arch)
    with pytest.raises(ValueError, match=r"resnet34\.pth: weights do not fit resnet18: unexpected keys \[layer"):
        load_image_weights(encoder, wrong_arch)

    state = dict(rgb_state)
    del state["layer3.1.bn2.weight"]
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    broken = tmp_path / "broken.safetensors"
    save_file(state, broken)
    with pytest.raises(ValueError, match="broken.safetensors") as err:
        load_image_weights(encoder, broken)
    message = str(err.value)
    assert "missing keys [layer3.1.bn2.weight] (1)" in message
    assert "shape mismatches (file vs model) [layer1.0.conv1.weight (64, 64, 1, 1) vs (64, 64, 3, 3)]" in message

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="garbage.safetensors: cannot read image weights"):
        load_image_weights(encoder, garbage)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_image_weights(encoder, tmp_path / "absent.pth")


def test_unknown_architectures_refused():
    with pytest.raises(ValueError, match="not a torchvision model builder"):
        build_image_encoder("resnet_nonexistent")
    with pytest.raises(ValueError, match="not a torchvision ResNet"):
        build_image_encoder("mobilenet_v3_small")


# -- exports ------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
def test_exported_image_encoder_loads_into_torchvision(tmp_path, tokenizer, rgb_state, channels_last):
    torch.manual_seed(0)
    m, _ = build_model(dataclasses.replace(TINY, channels_last=channels_last), tokenizer=tokenizer)
    rgb_path = tmp_path / "rgb.pth"
    torch.save(rgb_state, rgb_path)
    load_image_weights(m.image_encoder, rgb_path)  # trained-looking BatchNorm statistics
    m.eval()
    path = export_image_encoder(m, tmp_path / "out" / "image_encoder.safetensors")
    state = load_file(path)
    assert not any(k.startswith("fc.") for k in state) and state["conv1.weight"].shape == (64, 1, 7, 7)
    assert [p.name for p in path.parent.iterdir()] == ["image_encoder.safetensors"]  # no temp file left

    tv = torchvision.models.resnet18()
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(expand_stem(state), strict=True)
    tv.eval()
    x = _gray()
    with torch.no_grad():
        torch.testing.assert_close(tv(x.repeat(1, 3, 1, 1)), m.image_features(x), atol=1e-4, rtol=1e-4)
    # Keeping torchvision's classifier instead: only fc.* is missing.
    with_fc = torchvision.models.resnet18()
    result = with_fc.load_state_dict(expand_stem(state), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys


def test_expand_stem_checks():
    with pytest.raises(KeyError, match="conv1.weight"):
        expand_stem({"layer1.0.conv1.weight": torch.zeros(1)})
    three = {"conv1.weight": torch.ones(8, 3, 7, 7)}
    assert expand_stem(three)["conv1.weight"] is three["conv1.weight"]  # already 3 channels


@contextlib.contextmanager
def _transformers_messages():
    """Everything transformers says while loading: its log records (WARNING and up, its default
    verbosity; its library logger does not propagate, so a handler goes on it) and Python warnings."""
    import warnings

    from transformers.utils import logging as hf_logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler, root, level = Keep(logging.WARNING), hf_logging.get_logger(), hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield records
        records.extend(str(w.message) for w in caught)
    finally:
        root.removeHandler(handler)
        hf_logging.set_verbosity(level)


def test_text_export_reloads_with_transformers(tmp_path, model, tokenizer, capfd):
    """As a user would load it: AutoModel / AutoTokenizer, nothing missing, unexpected or "newly
    initialized" (the pooler BertModel expects is exported, as zeros), the same features."""
    from transformers import AutoModel

    folder = tmp_path / "text_encoder"
    export_text_encoder(model, tokenizer, folder)
    export_text_encoder(model, tokenizer, folder)  # replacing an existing export works
    assert {"config.json", "model.safetensors", "text_projection.safetensors"} <= {p.name for p in folder.iterdir()}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left

    texts = ["cardiac silhouette is enlarged.", "no acute fracture and stable mediastinal contours."]
    capfd.readouterr()
    with _transformers_messages() as messages:
        bert, info = AutoModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
        reloaded_tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        bert_model = BertModel.from_pretrained(str(folder), local_files_only=True)
    stderr = capfd.readouterr().err
    assert messages == [], messages
    for word in ("newly initialized", "MISSING", "UNEXPECTED", "LOAD REPORT"):
        assert word not in stderr, stderr
    assert type(bert) is BertModel and not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    bert.eval()
    torch.testing.assert_close(bert.pooler.dense.weight, torch.zeros_like(bert.pooler.dense.weight))
    assert bert_model.pooler is not None
    tokens, reloaded_tokens = _tokens(tokenizer, texts), _tokens(reloaded_tok, texts)
    assert torch.equal(tokens["input_ids"], reloaded_tokens["input_ids"])
    with torch.no_grad():
        expected_features = model.text_features(tokens["input_ids"], tokens["attention_mask"])
        hidden = bert(**{k: reloaded_tokens[k] for k in ("input_ids", "attention_mask")}).last_hidden_state
        torch.testing.assert_close(masked_max_pool(hidden, reloaded_tokens["attention_mask"]), expected_features)

        capfd.readouterr()
        with _transformers_messages() as messages:
            bert2, tok2, projection = load_text_encoder(folder)  # ours: without the pooler, quietly
        assert messages == [] and "LOAD REPORT" not in capfd.readouterr().err and bert2.pooler is None
        hidden2 = bert2(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        torch.testing.assert_close(projection(masked_max_pool(hidden2, tokens["attention_mask"])),
                                   model.encode_text(tokens["input_ids"], tokens["attention_mask"]))
    assert tok2.get_vocab() == tokenizer.get_vocab()


# -- factory ------------------------------------------------------------------------------------


def test_build_model_from_local_text_folder(tmp_path, tokenizer):
    torch.manual_seed(5)
    pretrained = build_bert(vocab_size=len(tokenizer), layers=3, hidden=32, heads=2)
    folder = tmp_path / "tiny_bert"
    pretrained.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    cfg = dataclasses.replace(TINY, text_encoder=str(folder), freeze_text_layers=2)
    m, tok = build_model(cfg)
    assert tok.get_vocab() == tokenizer.get_vocab()
    torch.testing.assert_close(m.text_encoder.encoder.layer[2].output.dense.weight,
                               pretrained.encoder.layer[2].output.dense.weight)
    bert = m.text_encoder
    assert len(bert.encoder.layer) == 3 and m.text_projection[0].in_features == 32
    assert not any(p.requires_grad for mod in (bert.embeddings, *bert.encoder.layer[:2]) for p in mod.parameters())
    assert all(p.requires_grad for p in bert.encoder.layer[2].parameters())

    with pytest.raises(ValueError, match="freeze_text_layers=6 outside 0..3"):
        build_model(dataclasses.replace(cfg, freeze_text_layers=6))
    with pytest.raises(FileNotFoundError, match="no_such_bert"):
        build_model(dataclasses.replace(cfg, text_encoder=str(tmp_path / "no_such_bert")))


def test_text_encoder_folder_without_tokenizer_is_refused(tmp_path, tokenizer):
    """A BERT saved without its tokenizer: transformers would build an empty one (every word
    [UNK]); the folder is refused, named, with what to do."""
    folder = tmp_path / "bert_alone"
    build_bert(vocab_size=len(tokenizer), layers=1, hidden=32, heads=2).save_pretrained(folder)
    cfg = dataclasses.replace(TINY, text_encoder=str(folder), freeze_text_layers=0)
    with pytest.raises(FileNotFoundError, match=r"bert_alone: no tokenizer in this folder .*save_pretrained"):
        build_model(cfg)
    tokenizer.save_pretrained(folder)
    assert build_model(cfg)[1].get_vocab() == tokenizer.get_vocab()


def test_load_bert_from_masked_lm_checkpoint_and_refuses_partial_ones(tmp_path):
    """ClinicalBERT-style folders hold a BertForMaskedLM: its encoder loads, the MLM head is
    ignored; a checkpoint lacking encoder weights is refused (not silently re-initialised)."""
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    mlm = BertForMaskedLM(config)
    folder = tmp_path / "clinical_like"
    mlm.save_pretrained(folder)
    bert = load_bert(folder)
    torch.testing.assert_close(bert.encoder.layer[1].output.dense.weight, mlm.bert.encoder.layer[1].output.dense.weight)
    assert bert.pooler is None

    weights = load_file(folder / "model.safetensors")
    del weights["bert.encoder.layer.1.output.dense.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"clinical_like: .*missing \['encoder.layer.1.output.dense.weight'\]"):
        load_bert(folder)


def test_build_model_trains_a_tokenizer_or_refuses():
    m, tok = build_model(TINY, corpus=_corpus())
    assert m.text_encoder.get_input_embeddings().num_embeddings == len(tok) > 5
    assert tok.convert_tokens_to_ids("[PAD]") == m.text_encoder.config.pad_token_id
    with pytest.raises(ValueError, match="a tokenizer or a corpus"):
        build_model(TINY)


def test_build_model_loads_image_weights_and_channels_last(tmp_path, tokenizer):
    rgb = _torchvision_resnet18()
    path = tmp_path / "imagenet_like.pth"
    torch.save(rgb.state_dict(), path)
    cfg = dataclasses.replace(TINY, image_weights=str(path), projection="linear", projection_dim=16)
    fast, _ = build_model(dataclasses.replace(cfg, channels_last=True), tokenizer=tokenizer)
    plain, _ = build_model(cfg, tokenizer=tokenizer)
    torch.testing.assert_close(plain.image_encoder.layer3[0].conv1.weight, rgb.layer3[0].conv1.weight)
    assert fast.image_encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.image_encoder.layer4[1].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.image_encoder.layer4[1].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert len(plain.image_projection) == 1 and plain.image_projection[0].out_features == 16
    fast.image_projection.load_state_dict(plain.image_projection.state_dict())
    x = _gray()
    with torch.no_grad():
        torch.testing.assert_close(fast.eval().encode_image(x), plain.eval().encode_image(x), atol=1e-4, rtol=1e-4)


# -- one model class: optional text side, strings in, checkpoints, exports ----------------------


def test_image_only_model_and_text_from_strings(model, tokenizer):
    """An image-only ConVIRTModel encodes images as its pooled features and refuses text; a full
    one embeds strings with its own tokenizer exactly as from the token tensors."""
    from convirt_fast.models import build_image_model

    torch.manual_seed(0)
    image_only = build_image_model(TINY, name="random (resnet18)").eval()
    assert not image_only.has_text and image_only.image_projection is None and image_only.name == "random (resnet18)"
    x = _gray()
    with torch.no_grad():
        assert torch.equal(image_only.encode_image(x), image_only.image_features(x))
    with pytest.raises(RuntimeError, match="no text side"):
        image_only.encode_text(["no effusion."])
    with pytest.raises(ValueError, match="both or neither"):
        ConVIRTModel(build_image_encoder("resnet18"), model.text_encoder)
    with pytest.raises(ValueError, match="needs the image projection"):
        ConVIRTModel(build_image_encoder("resnet18"), model.text_encoder, None, model.text_projection)

    assert model.has_text and model.tokenizer is tokenizer
    texts = ["cardiac silhouette is enlarged.", "no acute fracture and stable mediastinal contours."]
    tokens = tokenizer(texts, padding="longest", truncation=True, max_length=model.max_length, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model.encode_text(texts), model.encode_text(tokens["input_ids"], tokens["attention_mask"]))
        assert torch.equal(model.encode_text(texts[0]), model.encode_text(texts[:1]))
    with pytest.raises(TypeError, match="attention_mask"):
        model.encode_text(tokens["input_ids"])
    copy = model.fresh_image_encoder()
    assert copy.training and all(p.requires_grad for p in copy.parameters()) and copy is not model.image_encoder


def test_model_from_checkpoint_reads_no_pretrained_weights(tmp_path, tokenizer):
    """The model of a checkpoint is built once from its config and loaded: image_weights and the
    pretrained BERT's weights are not read (here: gone), only the BERT's config.json (here from
    a fallback folder, as a run's export/text_encoder/)."""
    from convirt_fast.models import model_from_checkpoint

    torch.manual_seed(5)
    bert_folder = tmp_path / "tiny_bert"
    build_bert(vocab_size=len(tokenizer), layers=2, hidden=32, heads=2).save_pretrained(bert_folder)
    tokenizer.save_pretrained(bert_folder)
    weights = tmp_path / "imagenet_like.pth"
    torch.save(_torchvision_resnet18().state_dict(), weights)
    cfg = dataclasses.replace(TINY, text_encoder=str(bert_folder), image_weights=str(weights), freeze_text_layers=1)
    trained, _ = build_model(cfg)
    state = {"config": {"model": dataclasses.asdict(cfg), "data": {"max_length": 17}}, "model": trained.state_dict()}

    spare = tmp_path / "spare_config"
    spare.mkdir()
    (spare / "config.json").write_bytes((bert_folder / "config.json").read_bytes())
    weights.unlink()
    (bert_folder / "model.safetensors").unlink()
    loaded = model_from_checkpoint(state, tokenizer, text_config=spare, name="run")
    assert loaded.name == "run" and loaded.max_length == 17 and not loaded.training and loaded.has_text
    x = _gray()
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), trained.eval().encode_image(x))
        assert torch.equal(loaded.encode_text(["no acute fracture."]), trained.encode_text(["no acute fracture."]))
    with pytest.raises(ValueError, match="trained its own tokenizer"):
        model_from_checkpoint({**state, "config": {"model": dataclasses.asdict(TINY)}})
    with pytest.raises(ValueError, match="not a convirt_fast run config"):
        model_from_checkpoint({**state, "config": {"model": {"no_such_field": 1}}}, tokenizer)


def test_export_model_describes_itself(tmp_path, model, tokenizer):
    from convirt_fast.data.augment import AugmentSpec
    from convirt_fast.models import EXPORT_INFO_FILE, build_image_model, export_model, read_export_info

    spec = AugmentSpec(output_size=48, mean=0.5, std=0.25)
    folder = export_model(model, tmp_path / "export", model_config=TINY, augment=spec, max_length=21, name="run")
    assert {p.name for p in folder.iterdir()} == {"image_encoder.safetensors", "image_projection.safetensors",
                                                  "text_encoder", EXPORT_INFO_FILE}
    info = read_export_info(folder)
    assert (info.name, info.model, info.augment, info.max_length) == ("run", TINY, spec, 21)
    assert read_export_info(tmp_path) is None
    (tmp_path / EXPORT_INFO_FILE).write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="convirt.json: not a readable convirt_fast export description"):
        read_export_info(tmp_path)

    image_only = export_model(build_image_model(TINY), tmp_path / "image_only", model_config=TINY, augment=spec)
    assert {p.name for p in image_only.iterdir()} == {"image_encoder.safetensors", EXPORT_INFO_FILE}
