"""The training loader on prepared data: shapes, determinism, sharding, resume, bad images."""

import shutil
import subprocess
import sys

import pytest
import torch

from convirt_fast.data.augment_dali import dali_available
from convirt_fast.data.loader import ConVIRTLoader, resolve_backend
from convirt_fast.data.manifest import load_manifest
from convirt_fast.data.study_sampler import StudySampler
from convirt_fast.text.tokenizer import train_wordpiece

BACKENDS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="DALI not installed"))]


def prepare(*args):
    subprocess.run([sys.executable, "-m", "convirt_fast.prepare", *args, "--no-progress", "--workers", "1"],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    prepare("synthetic", "--n", "60", "--size", "128", "--out", str(out))
    return load_manifest(out)


@pytest.fixture(scope="module")
def covid(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("covid")
    prepare("csv", "--csv", str(shared_data / "covid-cxr" / "pairs.csv"), "--image-col", "image",
            "--text-col", "notes", "--patient-col", "patient_id", "--out", str(out))
    return load_manifest(out)


@pytest.fixture(scope="module")
def tokenizer(synth):
    # Trained on the train split only, as the trainer does: held-out text never shapes the vocabulary.
    return train_wordpiece([synth.studies[i].report for i in synth.split_indices("train")], vocab_size=1000)


def make(manifest, tokenizer, split="train", **kw):
    kw.setdefault("rows", manifest.split_indices(split))
    kw.setdefault("batch_size", 8)
    kw.setdefault("num_workers", 0)
    kw.setdefault("backend", "torch")
    return ConVIRTLoader(manifest, tokenizer, **kw)


def collect(loader, limit=None):
    out = []
    for batch in loader:
        out.append(batch)
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("data", ["synth", "covid"])
def test_batches(request, tokenizer, backend, data):
    manifest = request.getfixturevalue(data)
    loader = make(manifest, tokenizer, backend=backend)
    batches = collect(loader)
    assert len(batches) == len(loader) > 0
    for batch in batches:
        images = batch["images"]
        assert images.shape == (8, 1, 224, 224) and images.dtype == torch.float32
        # normalised [0, 1] pixels: (x - 0.449) / 0.226 lies in [-1.99, 2.44]
        assert images.min() >= -0.449 / 0.226 - 1e-4 and images.max() <= 0.551 / 0.226 + 1e-4
        assert images.std() > 0.1
        assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 8
        assert (batch["attention_mask"].sum(1) >= 3).all()  # [CLS] + at least one token + [SEP]
        for row, sentence in zip(batch["rows"].tolist(), batch["sentences"]):
            assert manifest.studies[row].split == "train"
    rows = torch.cat([b["rows"] for b in batches])
    assert len(set(rows.tolist())) == len(rows)  # one epoch: each study at most once


def test_seeded_and_different_across_epochs(synth, tokenizer):
    a = collect(make(synth, tokenizer, seed=3))
    b = collect(make(synth, tokenizer, seed=3))
    for x, y in zip(a, b):
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["input_ids"], y["input_ids"])
    loader = make(synth, tokenizer, seed=3)
    first, second = collect(loader), collect(loader)
    assert loader.epoch == 2
    assert not torch.equal(first[0]["rows"], second[0]["rows"])
    assert not torch.equal(first[0]["images"], second[0]["images"])
    other_seed = collect(make(synth, tokenizer, seed=4))
    assert not torch.equal(other_seed[0]["rows"], a[0]["rows"])


def test_workers_do_not_change_the_batches(synth, tokenizer):
    a = collect(make(synth, tokenizer, num_workers=0))
    b = collect(make(synth, tokenizer, num_workers=2))
    for x, y in zip(a, b):
        assert torch.equal(x["rows"], y["rows"]) and torch.allclose(x["images"], y["images"])
        assert x["sentences"] == y["sentences"]


def test_two_ranks_get_disjoint_shares_covering_the_epoch(synth, tokenizer):
    shares = []
    for rank in range(2):
        loader = make(synth, tokenizer, rank=rank, world_size=2, batch_size=5, drop_last=False)
        shares.append(torch.cat([b["rows"] for b in collect(loader)]).tolist())
    train_rows = set(synth.split_indices("train"))
    assert len(shares[0]) == len(shares[1])
    assert not set(shares[0]) & set(shares[1])
    assert len(train_rows - set(shares[0]) - set(shares[1])) <= 1  # an odd study out, at most


def test_sampler_shares_every_epoch():
    for n, world in [(10, 2), (11, 2), (64, 4)]:
        for epoch in range(3):
            shares = [StudySampler(list(range(n)), 4, seed=1, rank=r, world_size=world).share(epoch) for r in range(world)]
            flat = [x for s in shares for x in s]
            assert len(flat) == len(set(flat)) == world * (n // world)


def test_resume_continues_exactly(synth, tokenizer):
    straight = make(synth, tokenizer, seed=5)
    expected = collect(straight) + collect(straight)  # two epochs
    first = make(synth, tokenizer, seed=5)
    head = collect(first, limit=len(first) + 2)  # into the second epoch
    state = first.state_dict()
    resumed = make(synth, tokenizer, seed=5)
    resumed.load_state_dict(state)
    tail = collect(resumed)
    got = head + tail
    assert len(got) == len(expected)
    for x, y in zip(got, expected):
        assert torch.equal(x["rows"], y["rows"]) and torch.equal(x["images"], y["images"])
        assert x["sentences"] == y["sentences"]


def test_resume_refuses_another_setup(synth, tokenizer):
    state = make(synth, tokenizer, seed=5).state_dict()
    with pytest.raises(ValueError, match="another setup"):
        make(synth, tokenizer, seed=6).load_state_dict(state)


def test_resume_refuses_other_rows_of_the_same_count(synth, tokenizer):
    """The state fingerprints the rows: a resume with as many but other rows is refused, saying
    so; the same rows in another order (a set, for a shuffling loader) resume."""
    train, validate = synth.split_indices("train"), synth.split_indices("validate")
    rows = train[:20]
    state = make(synth, tokenizer, rows=rows, seed=5).state_dict()
    assert state["num_rows"] == 20 and len(state["rows_sha256"]) == 16
    other = train[:16] + validate[:4]
    with pytest.raises(ValueError, match="another setup.*rows_sha256.*the rows drawn from differ"):
        make(synth, tokenizer, rows=other, seed=5).load_state_dict(state)
    make(synth, tokenizer, rows=rows[::-1], seed=5).load_state_dict(state)
    old = {k: v for k, v in state.items() if k != "rows_sha256"}  # a state from before the fingerprint
    make(synth, tokenizer, rows=rows, seed=5).load_state_dict(old)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_images_are_replaced_and_counted(synth, tokenizer, tmp_path, backend):
    root = tmp_path / "broken"
    shutil.copytree(synth.root, root)
    manifest = load_manifest(root)
    train = manifest.split_indices("train")
    broken = {}
    for row, damage in zip(train[:3], ["empty", "garbage", "truncated"]):
        path = manifest.image_paths(row)[0]
        data = path.read_bytes()
        path.write_bytes({"empty": b"", "garbage": b"\x00" * 500, "truncated": data[: len(data) // 3]}[damage])
        broken[str(path)] = damage
    loader = make(manifest, tokenizer, backend=backend, drop_last=False)  # visit every study
    batches = collect(loader)
    rows = torch.cat([b["rows"] for b in batches]).tolist()
    assert not set(train[:3]) & set(rows)
    assert len(rows) == len(train)  # each broken study was replaced, none dropped
    assert all(b["images"].shape[0] == len(b["rows"]) for b in batches)
    assert set(loader.replaced) == set(broken)
    assert loader.state_dict()["replaced"] == loader.replaced


@pytest.mark.skipif(not dali_available(), reason="DALI not installed")
def test_backends_agree_on_the_same_images(covid, tokenizer):
    torch_batches = collect(make(covid, tokenizer, backend="torch", seed=2))
    dali_batches = collect(make(covid, tokenizer, backend="dali", seed=2))
    for t, d in zip(torch_batches, dali_batches):
        assert torch.equal(t["rows"], d["rows"])
        # Same parameters: pixel differences come from interpolation details only.
        assert (t["images"] - d["images"]).abs().mean() < 0.01
    t_all = torch.cat([b["images"] for b in torch_batches])
    d_all = torch.cat([b["images"] for b in dali_batches])
    assert abs(t_all.mean() - d_all.mean()) < 0.01 and abs(t_all.std() - d_all.std()) < 0.01


@pytest.mark.skipif(not dali_available(), reason="DALI not installed")
def test_dali_failures_fall_back_per_batch_counted_and_rebuild_once(synth, tokenizer, monkeypatch):
    """A DALI error redoes that batch with CPU decoding (same rows, images from the torch path),
    is counted and warned once per cause, and the pipeline is rebuilt once, not after every failure."""
    import convirt_fast.data.loader as loader_module

    built = []

    class FailingDali:
        def __init__(self, *args, **kwargs):
            built.append(1)

        def __call__(self, *args, **kwargs):
            raise RuntimeError("[/pipeline] Error in thread 0: nvJPEG failed to decode")

    monkeypatch.setattr(loader_module, "DaliAugmenter", FailingDali)
    expected = collect(make(synth, tokenizer, backend="torch", seed=3))
    loader = make(synth, tokenizer, backend="dali", seed=3)
    batches = collect(loader)
    assert len(batches) == len(expected) >= 3
    for got, want in zip(batches, expected):
        assert torch.equal(got["rows"], want["rows"]) and torch.allclose(got["images"], want["images"])
    assert dict(loader.decode_fallbacks) == {"DALI: [/pipeline] Error in thread 0: nvJPEG failed to decode": len(batches)}
    assert len(built) == 2  # the first pipeline and one rebuild


def test_evaluation_order_and_transform(synth, tokenizer):
    loader = make(synth, tokenizer, split="validate", train=False, batch_size=4)
    batches = collect(loader)
    rows = torch.cat([b["rows"] for b in batches]).tolist()
    assert rows == sorted(rows)
    again = collect(make(synth, tokenizer, split="validate", train=False, batch_size=4))
    assert all(torch.equal(x["images"], y["images"]) for x, y in zip(batches, again))


def test_rows_select_exactly_those_rows(synth, tokenizer):
    """rows= is the selection, from any split. A shuffling loader treats it as a set (sorted:
    the caller's order does not change the batches); an evaluation loader keeps its order."""
    import random

    rows = synth.split_indices("train")[::2] + synth.split_indices("validate")[:5]
    shuffled = list(rows)
    random.Random(0).shuffle(shuffled)
    a = make(synth, tokenizer, rows=rows, batch_size=5, drop_last=False, seed=2)
    b = make(synth, tokenizer, rows=shuffled, batch_size=5, drop_last=False, seed=2)
    assert a.rows == b.rows == sorted(rows)
    for epoch in range(2):
        x, y = collect(a), collect(b)
        got = torch.cat([batch["rows"] for batch in x]).tolist()
        assert sorted(got) == sorted(rows)  # exactly those rows, each once
        for p, q in zip(x, y):
            assert torch.equal(p["rows"], q["rows"]) and torch.equal(p["images"], q["images"])
            assert p["sentences"] == q["sentences"]
    ordered = make(synth, tokenizer, rows=shuffled, train=False, batch_size=4, drop_last=False)
    assert ordered.rows == shuffled
    assert torch.cat([batch["rows"] for batch in collect(ordered)]).tolist() == shuffled


def test_rows_are_checked(synth, tokenizer):
    import dataclasses

    from convirt_fast.data.manifest import Manifest

    n = len(synth)
    for rows, error, match in [([], ValueError, "no rows to draw from"),
                               ([0, n], ValueError, f"rows outside the manifest's {n} rows: rows {n}"),
                               ([3, 1, 3], ValueError, "rows given more than once: rows 3"),
                               ("train", TypeError, r"split_indices\('train'\)")]:
        with pytest.raises(error, match=match):
            make(synth, tokenizer, rows=rows)
    chosen = synth.split_indices("validate")[:3]
    without_images = Manifest(synth.root, [dataclasses.replace(s, images=()) if i in chosen else s
                                           for i, s in enumerate(synth.studies)], synth.label_columns, synth.meta)
    with pytest.raises(ValueError, match=f"none of the 3 rows to draw from \\(rows {chosen[0]}, .*\\) has an "
                                         f"image and a sentence"):
        make(without_images, tokenizer, rows=chosen)
    with pytest.raises(ValueError, match="none of the 3 rows .* has an image$"):
        make(without_images, None, rows=chosen)
    partly = make(without_images, tokenizer, rows=chosen + synth.split_indices("train")[:10], batch_size=2)
    assert partly.excluded_without_text == 3 and set(partly.rows) == set(synth.split_indices("train")[:10])


@pytest.mark.parametrize("train", [True, False], ids=["shuffling", "evaluation"])
def test_set_epoch_reproduces_an_epoch(synth, tokenizer, train):
    loader = make(synth, tokenizer, seed=3, train=train)
    epochs = [collect(loader) for _ in range(3)]
    assert loader.epoch == 3
    collect(loader, limit=2)  # mid-epoch: set_epoch starts the chosen epoch from its first batch
    for epoch in (1, 0, 2):
        loader.set_epoch(epoch)
        assert (loader.epoch, loader.position) == (epoch, 0)
        again = collect(loader)
        assert len(again) == len(epochs[epoch]) and loader.epoch == epoch + 1
        for x, y in zip(again, epochs[epoch]):
            assert torch.equal(x["rows"], y["rows"]) and torch.equal(x["images"], y["images"])
            assert x["sentences"] == y["sentences"]
    assert train == (not torch.equal(epochs[0][0]["rows"], epochs[1][0]["rows"]))  # shuffled per epoch or not
    for bad in (-1, 1.5, "1"):
        with pytest.raises(ValueError, match="epoch must be an integer"):
            loader.set_epoch(bad)


@pytest.mark.parametrize("train", [True, False], ids=["shuffling", "evaluation"])
def test_one_loader_with_persistent_workers_across_epochs_equals_fresh_loaders(synth, tokenizer, train):
    """Evaluation and fine-tuning reuse one loader: set_epoch each pass, the same worker
    processes throughout, the batches those of a fresh loader per epoch."""
    reused = make(synth, tokenizer, seed=6, train=train, num_workers=2, drop_last=False)
    got, pids = [], set()
    for epoch in (0, 1, 0):
        reused.set_epoch(epoch)
        got.append(collect(reused))
        pids.add(tuple(w.pid for w in reused._live._workers))
    assert len(pids) == 1  # no new worker processes
    for epoch, batches in zip((0, 1, 0), got):
        fresh = make(synth, tokenizer, seed=6, train=train, drop_last=False)
        fresh.set_epoch(epoch)
        expected = collect(fresh)
        assert len(batches) == len(expected) > 0
        for x, y in zip(batches, expected):
            assert torch.equal(x["rows"], y["rows"]) and torch.allclose(x["images"], y["images"])
            assert x["sentences"] == y["sentences"]
    reused.close()


def test_a_worker_reports_an_unreadable_image_as_an_image_problem(synth, tokenizer, tmp_path, caplog):
    """A worker sends an ImageProblem (row, study, file, message), not a string to parse: a
    folder with a colon in its name, which a split(":") would cut, is counted under its file."""
    from convirt_fast.data.loader import ImageProblem

    root = tmp_path / "with:colon"
    shutil.copytree(synth.root, root)
    manifest = load_manifest(root)
    row = manifest.split_indices("train")[4]
    path = manifest.image_paths(row)[0]
    path.write_bytes(b"\x00" * 500)
    loader = make(manifest, tokenizer, num_workers=2, drop_last=False, seed=1)
    seen = []
    finish = loader._finish
    loader._finish = lambda raw: seen.extend(raw["problems"]) or finish(raw)  # what came from the workers
    with caplog.at_level("WARNING", logger="convirt_fast.data.loader"):
        rows = torch.cat([b["rows"] for b in collect(loader)]).tolist()
    loader.close()
    assert len(seen) == 1 and isinstance(seen[0], ImageProblem)
    problem = seen[0]
    assert (problem.row, problem.study_id, problem.path) == (row, manifest.studies[row].study_id, str(path))
    assert problem.message.startswith(f"{path}: ") and "with:colon" in problem.path
    assert dict(loader.replaced) == {str(path): 1} and row not in rows
    assert f"study {problem.study_id} (row {row}" in caplog.text


def test_backend_resolution():
    assert resolve_backend("torch", torch.device("cuda")) == "torch"
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="data.backend"):
        resolve_backend("opencv", torch.device("cpu"))


def test_epochs_stream_through_one_iterator(synth, tokenizer, monkeypatch):
    """Workers prefetch across epoch boundaries and `for` loops (one DataLoader iterator); the
    batches stay those of the single-process loader, and a jump of position (resume) restarts
    the stream there."""
    from torch.utils.data import DataLoader

    straight = make(synth, tokenizer, seed=7)
    expected = collect(straight) + collect(straight) + collect(straight, limit=2)
    starts = []
    original = DataLoader.__iter__
    monkeypatch.setattr(DataLoader, "__iter__", lambda self: starts.append(1) or original(self))
    loader = make(synth, tokenizer, seed=7, num_workers=2)
    got = collect(loader, limit=3)  # break mid-epoch: the live iterator keeps its place
    got += collect(loader) + collect(loader) + collect(loader, limit=2)
    assert len(starts) == 1 and loader.epoch == 2 and loader.position == 2
    assert len(got) == len(expected)
    for x, y in zip(got, expected):
        assert torch.equal(x["rows"], y["rows"]) and torch.allclose(x["images"], y["images"])
    loader.load_state_dict(make(synth, tokenizer, seed=7).state_dict())  # back to epoch 0, batch 0
    again = collect(loader, limit=1)[0]
    assert len(starts) == 2 and torch.equal(again["rows"], expected[0]["rows"])
    loader.close()


# ----------------------------------------------------------------------------------------------
# data.decode: JPEGs decoded in the main process on the device (nvJPEG on a GPU)


def test_decode_option_is_validated():
    """One check, one message: the config and the loader refuse the same values alike."""
    from convirt_fast.config import DataConfig
    from convirt_fast.data.loader import resolve_decode

    for decode, backend, match in [("nvjpeg", "torch", "data.decode must be one of"), ("gpu", "dali", "torch backend")]:
        with pytest.raises(ValueError, match=match) as from_config:
            DataConfig(decode=decode, backend=backend)
        with pytest.raises(ValueError, match=match) as from_loader:
            resolve_decode(decode, backend, torch.device("cuda"))
        assert str(from_config.value) == str(from_loader.value)
    assert resolve_decode("auto", "torch", torch.device("cpu")) == "cpu"
    assert resolve_decode("auto", "dali", torch.device("cuda")) == "cpu"  # DALI's own decoder
    assert resolve_decode("cpu", "torch", torch.device("cuda")) == "cpu"


def test_gpu_decode_without_cuda_is_an_error(synth, tokenizer):
    """decode=gpu on a CPU raises, naming the fix (no silent fallback); auto decodes on the CPU."""
    with pytest.raises(ValueError, match="data.decode=gpu needs a CUDA device.*decode=auto"):
        make(synth, tokenizer, decode="gpu", device="cpu")
    assert make(synth, tokenizer, decode="auto", device="cpu").decode == "cpu"


@pytest.fixture
def device_decode_on_cpu(monkeypatch):
    """The decode="gpu" path (bytes in the workers, batched torchvision decode in the main
    process) run on the CPU device: torchvision's CPU decoder stands in for nvJPEG."""
    import convirt_fast.data.loader as loader_module

    monkeypatch.setattr(loader_module, "resolve_decode", lambda decode, backend, device: decode)


def mixed_formats(synth, tmp_path):
    """A copy of SynthCXR where a few images are an 8-bit PNG, a 16-bit PNG, a truncated JPEG."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "mixed"
    shutil.copytree(synth.root, root)
    manifest = load_manifest(root)
    train = manifest.split_indices("train")
    paths = [manifest.image_paths(r)[0] for r in train[:3]]
    pixels = np.asarray(Image.open(paths[0]))
    Image.fromarray(pixels).save(paths[0], format="PNG")  # content decides, not the name
    Image.fromarray(pixels.astype(np.uint16) * 257).save(paths[1], format="PNG")
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) // 2])
    return manifest, train[:3], str(paths[2])


@pytest.mark.parametrize("workers", [0, 2])
def test_device_decode_path_matches_worker_decode(synth, tokenizer, tmp_path, device_decode_on_cpu, workers):
    manifest, odd_rows, truncated = mixed_formats(synth, tmp_path)
    reference = make(manifest, tokenizer, decode="cpu", drop_last=False, seed=1)
    device = make(manifest, tokenizer, decode="gpu", drop_last=False, seed=1, num_workers=workers)
    assert device._plan.decode_on_device
    a, b = collect(reference), collect(device)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x["rows"], y["rows"]) and x["sentences"] == y["sentences"]
        assert (x["images"] - y["images"]).abs().max() < 1e-5  # same pixels, same parameters
    rows = set(torch.cat([x["rows"] for x in b]).tolist())
    assert set(odd_rows[:2]) <= rows and odd_rows[2] not in rows  # PNGs used, truncated replaced
    assert set(device.replaced) == {truncated}
    # The truncated JPEG never reached the device decoder (no EOI: the worker decoded it).
    assert not device.decode_fallbacks and not device.gpu_rejected


def test_device_decode_failure_redoes_the_batch_on_the_cpu(synth, tokenizer, monkeypatch, device_decode_on_cpu,
                                                          caplog):
    """A decoder that rejects everything: each batch is counted under one cause, warned once,
    its files go to the workers and the batch is the CPU-decoded one."""
    import convirt_fast.data.loader as loader_module

    def failing(encoded, device):
        raise RuntimeError("Error while decoding JPEG images: nvjpeg status 2")

    reference = collect(make(synth, tokenizer, decode="cpu", seed=2), limit=2)
    monkeypatch.setattr(loader_module, "decode_jpegs_on_device", failing)
    loader = make(synth, tokenizer, decode="gpu", seed=2)
    with caplog.at_level("WARNING", logger="convirt_fast.data.loader"):
        redone = collect(loader, limit=2)
    for x, y in zip(reference, redone):
        assert torch.equal(x["rows"], y["rows"]) and torch.equal(x["images"], y["images"])
    cause = "GPU decode: Error while decoding JPEG images: nvjpeg status 2"
    assert loader.decode_fallbacks == {cause: 2} and loader.state_dict()["decode_fallbacks"] == {cause: 2}
    assert len(loader.gpu_rejected) == 16 and len(caplog.records) == 1 and cause in caplog.text


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   torch.AcceleratorError("CUDA error: an illegal memory access was encountered")])
def test_device_failures_are_not_retried_as_decode_failures(synth, tokenizer, monkeypatch, device_decode_on_cpu,
                                                           error):
    """Out of memory and CUDA errors (RuntimeErrors too) say nothing about the files: they
    propagate, from the decoder and from the augmentation after it, with no fallback."""
    import convirt_fast.data.loader as loader_module

    def failing(*args):
        raise error

    for name in ("decode_jpegs_on_device", "_augment_torch"):
        with monkeypatch.context() as patch:
            patch.setattr(loader_module, name, failing)
            loader = make(synth, tokenizer, decode="gpu", seed=2)
            with pytest.raises(type(error)):
                collect(loader, limit=1)
            assert not loader.decode_fallbacks and not loader.gpu_rejected


def test_augmentation_errors_are_not_decode_failures(synth, tokenizer, monkeypatch, device_decode_on_cpu):
    import convirt_fast.data.loader as loader_module

    def failing(*args):
        raise RuntimeError("grid_sampler(): expected 4D input")

    monkeypatch.setattr(loader_module, "_augment_torch", failing)
    loader = make(synth, tokenizer, decode="gpu", seed=2)
    with pytest.raises(RuntimeError, match="grid_sampler"):
        collect(loader, limit=1)
    assert not loader.decode_fallbacks


def with_cmyk_jpeg(synth, tmp_path):
    """A copy of SynthCXR where one training image is a CMYK JPEG (PIL reads it, nvJPEG does not)."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "cmyk"
    shutil.copytree(synth.root, root)
    manifest = load_manifest(root)
    row = manifest.split_indices("train")[0]
    path = manifest.image_paths(row)[0]
    gray = np.asarray(Image.open(path))
    Image.fromarray(np.stack([255 - gray] * 4, -1), "CMYK").save(path, format="JPEG", quality=95)
    return manifest, row, str(path)


@pytest.fixture
def cmyk_rejecting_decoder(monkeypatch):
    """The CPU stand-in for nvJPEG, which (like nvJPEG) fails the whole batch on a CMYK JPEG;
    records the batches it was given."""
    import io

    from PIL import Image

    import convirt_fast.data.loader as loader_module
    from convirt_fast.data.image_decode import decode_jpegs_on_device

    calls = []

    def decode(encoded, device):
        modes = [Image.open(io.BytesIO(e.numpy().tobytes())).mode for e in encoded]
        calls.append(modes)
        if "CMYK" in modes:
            raise RuntimeError("nvjpegDecodeBatchedPhaseOne failed: 7\n(more lines)")
        return decode_jpegs_on_device(encoded, device)

    monkeypatch.setattr(loader_module, "decode_jpegs_on_device", decode)
    return calls


@pytest.mark.parametrize("workers", [0, 2])
def test_a_jpeg_the_gpu_rejects_goes_to_the_workers_once(synth, tokenizer, tmp_path, device_decode_on_cpu,
                                                        cmyk_rejecting_decoder, workers):
    """The batch with the rejected file is decoded again one JPEG at a time (finding it), read
    again with it decoded by the worker; later epochs never send it to the device. Batches are
    those of CPU decoding, epoch after epoch, and the fallback is counted once."""
    manifest, row, cmyk = with_cmyk_jpeg(synth, tmp_path)
    reference = make(manifest, tokenizer, decode="cpu", seed=4)
    expected = collect(reference) + collect(reference)
    loader = make(manifest, tokenizer, decode="gpu", seed=4, num_workers=workers)
    got = collect(loader) + collect(loader)
    assert len(got) == len(expected)
    for x, y in zip(expected, got):
        assert torch.equal(x["rows"], y["rows"]) and (x["images"] - y["images"]).abs().max() < 1e-5
    assert row in torch.cat([b["rows"] for b in got]).tolist()  # used, not replaced
    assert loader.gpu_rejected == {cmyk} and not loader.replaced
    assert loader.decode_fallbacks == {"GPU decode: nvjpegDecodeBatchedPhaseOne failed: 7": 1}
    assert sum("CMYK" in modes for modes in cmyk_rejecting_decoder) == 2  # the batch, then alone
    loader.close()


def test_resume_keeps_the_gpu_rejected_files(synth, tokenizer, tmp_path, device_decode_on_cpu,
                                             cmyk_rejecting_decoder):
    manifest, _, cmyk = with_cmyk_jpeg(synth, tmp_path)
    straight = make(manifest, tokenizer, decode="gpu", seed=4)
    expected = collect(straight) + collect(straight)
    first = make(manifest, tokenizer, decode="gpu", seed=4)
    head = collect(first, limit=len(first) + 1)
    state = first.state_dict()
    assert state["gpu_rejected"] == [cmyk] and sum(state["decode_fallbacks"].values()) == 1
    calls = len(cmyk_rejecting_decoder)
    resumed = make(manifest, tokenizer, decode="gpu", seed=4)
    resumed.load_state_dict(state)
    got = head + collect(resumed)
    assert len(got) == len(expected)
    for x, y in zip(expected, got):
        assert torch.equal(x["rows"], y["rows"]) and torch.equal(x["images"], y["images"])
    assert not any("CMYK" in modes for modes in cmyk_rejecting_decoder[calls:])
    assert resumed.decode_fallbacks == first.decode_fallbacks and resumed.gpu_rejected == {cmyk}


def test_a_batch_read_before_its_file_was_rejected_is_read_again(synth, tokenizer, tmp_path, device_decode_on_cpu,
                                                                 cmyk_rejecting_decoder):
    """A worker may have read a batch (prefetched) with the rejected file's bytes before the
    rejection: it is read again here, without sending that file to the device nor counting."""
    manifest, row, cmyk = with_cmyk_jpeg(synth, tmp_path)
    loader = make(manifest, tokenizer, decode="gpu", seed=4)
    share = loader.sampler.share(0)
    b = next(b for b in range(len(loader)) if row in loader.sampler.batch(0, b, share))
    stale = loader._read_again((0, b))  # read with no file rejected
    assert cmyk in stale["jpeg_paths"]
    loader._keys.gpu_rejected = frozenset({cmyk})
    batch = loader._finish(stale)
    assert row in batch["rows"].tolist() and not loader.decode_fallbacks
    assert not any("CMYK" in modes for modes in cmyk_rejecting_decoder)


@pytest.mark.parametrize("decode", ["cpu", "gpu"], ids=["worker_decode", "device_decode"])  # "gpu" would skip
def test_decompression_bomb_limit_on_both_decode_paths(synth, tokenizer, tmp_path, monkeypatch, device_decode_on_cpu,
                                                       caplog, decode):
    """An image over PIL's pixel limit is replaced on both paths, with the same message (the
    device path checks the JPEG header before queueing the bytes)."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "bomb"
    shutil.copytree(synth.root, root)
    manifest = load_manifest(root)
    path = manifest.image_paths(manifest.split_indices("train")[0])[0]
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(path, format="JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)  # 128 x 128 below it, 200 x 200 above (warning range)
    loader = make(manifest, tokenizer, decode=decode, drop_last=False)
    with caplog.at_level("WARNING", logger="convirt_fast.data.loader"):
        collect(loader)
    assert set(loader.replaced) == {str(path)} and not loader.decode_fallbacks
    assert f"{path}: cannot decode image (Image size (40000 pixels) exceeds limit of 30000 pixels" in caplog.text


@pytest.mark.gpu
def test_gpu_decode_loader_matches_cpu_decode(synth, tokenizer):
    cpu = collect(make(synth, tokenizer, decode="cpu", device="cuda", seed=3))
    gpu_loader = make(synth, tokenizer, decode="gpu", device="cuda", seed=3, num_workers=2)
    assert gpu_loader.decode == "gpu"
    gpu = collect(gpu_loader)
    # Every batch decoded by nvJPEG: a silent fallback to the CPU would pass the comparison.
    assert not gpu_loader.decode_fallbacks and not gpu_loader.gpu_rejected
    assert len(cpu) == len(gpu) == len(gpu_loader)
    for x, y in zip(cpu, gpu):
        assert torch.equal(x["rows"], y["rows"]) and y["images"].is_cuda
        # nvJPEG and libjpeg-turbo may round the IDCT differently: a level here and there.
        assert (x["images"] - y["images"]).abs().mean() * 0.226 < 4e-3  # < 1 level of 255


@pytest.mark.gpu
def test_gpu_rejected_jpeg_goes_to_the_workers_on_cuda(synth, tokenizer, tmp_path):
    """The real nvJPEG on a CMYK JPEG: found once, decoded by the workers from then on, the
    other JPEGs still decoded on the GPU; batches as with CPU decoding."""
    import numpy as np

    from convirt_fast.data.image_decode import decode_jpegs_on_device

    manifest, _, cmyk = with_cmyk_jpeg(synth, tmp_path)
    try:
        decode_jpegs_on_device([torch.from_numpy(np.fromfile(cmyk, dtype=np.uint8))], torch.device("cuda"))
        pytest.skip("this nvJPEG decodes CMYK JPEGs")
    except RuntimeError:
        pass
    reference = make(manifest, tokenizer, decode="cpu", device="cuda", seed=3)
    cpu = collect(reference) + collect(reference)
    loader = make(manifest, tokenizer, decode="gpu", device="cuda", seed=3, num_workers=2)
    gpu = collect(loader) + collect(loader)
    assert sum(loader.decode_fallbacks.values()) == 1 and loader.gpu_rejected == {cmyk} and not loader.replaced
    assert len(cpu) == len(gpu)
    for x, y in zip(cpu, gpu):
        assert torch.equal(x["rows"], y["rows"])
        assert (x["images"] - y["images"]).abs().mean() * 0.226 < 4e-3
    loader.close()
