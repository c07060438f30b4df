"""Reliability under faults (issue 15): narrow, loud fallbacks; integrity of prepared data; bad
values refused early with the field named."""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings

import pytest
import torch

from convirt_fast import ConVIRTLoss
from convirt_fast.kernels import torch_loss
from convirt_fast.kernels.reference import convirt_loss_reference

cl = importlib.import_module("convirt_fast.kernels.convirt_loss")  # the module, not the function
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
needs_interpreter = pytest.mark.skipif(not INTERPRET, reason="needs Triton and TRITON_INTERPRET=1 (conftest.py)")


def _pair(n=37, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, d, generator=g)
    return img, 0.2 * img + torch.randn(n, d, generator=g)


def _loss_and_grads(backend, img, txt, tau=0.1, lam=0.75):
    x, y = img.clone().requires_grad_(), txt.clone().requires_grad_()
    t = torch.tensor(tau, requires_grad=True)
    loss = cl.convirt_loss(x, y, t, lam, backend=backend)
    (2.5 * loss).backward()  # grad_output != 1
    return loss.detach(), x.grad, y.grad, t.grad


def _out_of_resources():
    from triton.runtime.errors import OutOfResources

    return OutOfResources(232448, 101376, "shared memory")


def _cannot_launch(*args, **kwargs):
    """A Triton entry point on a GPU with too little shared memory for the tiles."""
    raise _out_of_resources()


# ------------------------------------------------------------------- loss: Triton -> torch fallback
@pytest.fixture
def fresh_fallback(monkeypatch):
    """No device has fallen back yet (the decision is process-wide)."""
    monkeypatch.setattr(cl, "_fallen_back", {})


@needs_triton
def test_kernel_failure_is_narrow():
    from triton.runtime.errors import PTXASError

    assert cl.kernel_failure(_out_of_resources())
    assert cl.kernel_failure(PTXASError("ptxas fatal: sm_60 is not supported"))
    assert cl.kernel_failure(RuntimeError("Triton Error [CUDA]: too many resources requested for launch"))
    assert cl.kernel_failure(ModuleNotFoundError("No module named 'triton'", name="triton"))
    # the real errors: memory, a broken context, anything not from Triton
    assert not cl.kernel_failure(RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"))
    assert not cl.kernel_failure(RuntimeError("Triton Error [CUDA]: out of memory"))
    assert not cl.kernel_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not cl.kernel_failure(RuntimeError("CUDA error: device-side assert triggered"))
    assert not cl.kernel_failure(ValueError("img and txt must both be (N, D)"))
    assert not cl.kernel_failure(ModuleNotFoundError("No module named 'numpy'", name="numpy"))


@needs_triton
def test_run_with_fallback_warns_once_per_device_and_remembers(fresh_fallback):
    calls = []

    def run(backend):
        calls.append(backend)
        if backend == "triton":
            raise _out_of_resources()
        return "torch result"

    dev = torch.device("cpu")
    with pytest.warns(RuntimeWarning, match=r"cannot run on cpu.*OutOfResources: out of resource: shared memory"):
        assert cl.run_with_fallback(dev, run) == "torch result"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert cl.run_with_fallback(dev, run) == "torch result"
    assert calls == ["triton", "torch", "torch"]  # Triton is not tried again on this device
    assert "shared memory" in cl.fell_back(dev)
    assert cl.fell_back(torch.device("meta")) is None  # per device
    assert cl.resolve_backend("auto", dev) == "torch"


def test_run_with_fallback_raises_what_is_not_a_kernel_failure(fresh_fallback):
    def run(backend):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        cl.run_with_fallback(torch.device("cpu"), run)
    assert cl.fell_back(torch.device("cpu")) is None


@needs_triton
def test_auto_falls_back_when_the_kernel_cannot_launch_explicit_triton_raises(fresh_fallback, monkeypatch):
    """The forced failure: the Triton backend's first entry point raises OutOfResources, as on a
    GPU with too little shared memory. auto gives the torch path's result (value and gradients,
    one warning); backend="triton" raises the error itself."""
    from convirt_fast.kernels import triton_loss

    monkeypatch.setattr(cl, "TRITON_DEVICE_TYPES", ("cpu",))  # auto means Triton here, as on CUDA
    monkeypatch.setattr(torch_loss, "DIRECT_ELEMS", 0)  # the custom-op path, not the small-N shortcut

    monkeypatch.setattr(triton_loss, "prologue", _cannot_launch)
    img, txt = _pair()
    with pytest.raises(type(_out_of_resources())):
        _loss_and_grads("triton", img, txt)
    assert cl.resolve_backend("auto", img.device) == "triton"
    expected = _loss_and_grads("torch", img, txt)
    with pytest.warns(RuntimeWarning, match="OutOfResources"):
        got = _loss_and_grads("auto", img, txt)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert cl.resolve_backend("auto", img.device) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _loss_and_grads("auto", img, txt)  # remembered: no new warning, no new attempt


@needs_interpreter
@pytest.mark.parametrize("direct", [True, False])
def test_backward_falls_back_after_a_triton_forward(fresh_fallback, monkeypatch, direct):
    """The forward ran in Triton, the backward's gradient-strip kernel cannot launch: the torch
    backward takes over from the Triton statistics (same definitions), giving its gradients."""
    from convirt_fast.kernels import triton_loss

    monkeypatch.setattr(cl, "TRITON_DEVICE_TYPES", ("cpu",))
    if not direct:
        monkeypatch.setattr(torch_loss, "DIRECT_ELEMS", 0)

    def no_launch(*args, **kwargs):
        raise RuntimeError("Triton Error [CUDA]: too many resources requested for launch")

    monkeypatch.setattr(triton_loss, "grad_strip", no_launch)
    img, txt = _pair(n=21, d=40, seed=3)
    expected = _loss_and_grads("torch", img, txt)
    with pytest.warns(RuntimeWarning, match="too many resources"):
        got = _loss_and_grads("auto", img, txt)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-7)


# --------------------------------------------------------------------------- loss: bad values
@pytest.mark.parametrize("tau", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_tau_refused_float_and_tensor(tau):
    img, txt = _pair(n=5, d=4)
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        cl.convirt_loss(img, txt, tau)
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        cl.convirt_loss(img, txt, torch.tensor(tau, requires_grad=True))
    with pytest.raises(ValueError, match="ConVIRTLoss: tau must be"):
        ConVIRTLoss(tau=tau)
    with pytest.raises(ValueError, match="ConVIRTLoss: min_tau must be"):
        ConVIRTLoss(min_tau=tau)


def test_tensor_tau_shape_and_dtype_and_lam():
    img, txt = _pair(n=5, d=4)
    with pytest.raises(ValueError, match="1-element"):
        cl.convirt_loss(img, txt, torch.tensor([0.1, 0.2]))
    with pytest.raises(TypeError, match="floating-point"):
        cl.convirt_loss(img, txt, torch.tensor(1))
    for lam in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="lam must lie in"):
            cl.convirt_loss(img, txt, 0.1, lam)
        with pytest.raises(ValueError, match="ConVIRTLoss: lam"):
            ConVIRTLoss(lam=lam)
    # a good tensor tau passes the check and gives the reference value
    ref = convirt_loss_reference(img.double(), txt.double(), 0.3, 0.75).item()
    assert cl.convirt_loss(img, txt, torch.tensor(0.3)).item() == pytest.approx(ref, rel=1e-5)


def test_module_tau_is_not_read_on_the_host(monkeypatch):
    """ConVIRTLoss's own temperature (a float, or exp(log_tau) >= min_tau) skips the value check:
    checking it would be a host read, a sync per step on a GPU."""
    img, txt = _pair(n=6, d=8)
    for learnable in (False, True):
        loss_fn = ConVIRTLoss(tau=0.1, learnable_tau=learnable)
        reads = []
        monkeypatch.setattr(torch.Tensor, "item", lambda self, *a: reads.append(1) or 0.0)
        loss_fn(img, txt).backward() if learnable else loss_fn(img, txt)
        monkeypatch.undo()
        assert reads == [], learnable


# ------------------------------------------------------------------ integrity of prepared data
TEXT = "FINDINGS: The lungs are clear today.\n\nIMPRESSION: No acute process seen."


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A small prepared folder (own CSV: manifest.csv, sentences.idx, manifest.json)."""
    from convirt_fast.prepare.own_csv import CsvConfig, prepare_csv
    from fixtures_data.fake_mimic import jpeg_bytes

    tmp = tmp_path_factory.mktemp("prepared")
    src = tmp / "src"
    src.mkdir()
    rows = ["image,patient,report"]
    for i in range(6):
        (src / f"{i}.jpg").write_bytes(jpeg_bytes(64, 64, seed=i))
        rows.append(f'{i}.jpg,p{i},"{TEXT}"')
    (src / "pairs.csv").write_text("\n".join(rows) + "\n")
    cfg = CsvConfig(csv=src / "pairs.csv", image_col="image", text_col="report", patient_col="patient")
    prepare_csv(tmp / "out", cfg, workers=1, progress=False)
    return tmp / "out"


@pytest.fixture
def folder(prepared, tmp_path):
    """A copy of the prepared folder that keeps the times (as cp -a, rsync -a)."""
    import shutil

    return shutil.copytree(prepared, tmp_path / "copy", copy_function=shutil.copy2)


@pytest.fixture
def count_hashes(monkeypatch):
    from convirt_fast.data import manifest as M

    monkeypatch.setattr(M, "_hashed", {})
    monkeypatch.setattr(M, "_told_unstamped", set())
    hashed = []
    real = M.file_sha256
    monkeypatch.setattr(M, "file_sha256", lambda p, *a: hashed.append(p.name) or real(p, *a))
    return hashed


def _meta(folder):
    import json

    return json.loads((folder / "manifest.json").read_text())


def _restamp_older(folder):
    """Files older than manifest.json (as after any prepare that took longer than a clock tick)."""
    from convirt_fast.data.manifest import write_meta

    for name in ("manifest.csv", "sentences.idx"):
        st = (folder / name).stat()
        os.utime(folder / name, ns=(st.st_atime_ns, st.st_mtime_ns - 10**10))
    write_meta(folder / "manifest.json", _meta(folder))


def test_prepare_records_size_and_mtime_beside_each_hash(prepared):
    meta = _meta(prepared)
    for key, name in (("manifest", "manifest.csv"), ("sentence_index", "sentences.idx")):
        st = (prepared / name).stat()
        assert len(meta[f"{key}_sha256"]) == 64
        assert (meta[f"{key}_size"], meta[f"{key}_mtime_ns"]) == (st.st_size, st.st_mtime_ns)


def test_unchanged_folder_loads_by_size_and_mtime_without_hashing(folder, count_hashes):
    from convirt_fast.data.manifest import load_manifest

    _restamp_older(folder)
    assert len(load_manifest(folder)) == 6 and count_hashes == []
    load_manifest(folder, full_hash=True)  # on request: every file hashed
    assert sorted(count_hashes) == ["manifest.csv", "sentences.idx"]


@pytest.mark.parametrize("name", ["sentences.idx", "manifest.csv"])
def test_half_copied_file_is_refused_naming_it_and_what_to_run(folder, count_hashes, name):
    from convirt_fast.data.manifest import ManifestError, load_manifest
    from convirt_fast.prepare.__main__ import main

    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ManifestError) as e:
        load_manifest(folder)
    message = str(e.value)
    assert message.startswith(str(folder / name)) and f"{len(data) // 2:,} bytes" in message
    assert "copied incompletely" in message and "--out" in message
    assert f"python -m convirt_fast.prepare check --train {folder}" in message
    assert count_hashes == []  # refused by size alone
    assert main(["check", "--train", str(folder)]) == 2


def test_same_size_edit_is_refused_by_its_hash(folder, count_hashes):
    """An edit keeps the size but moves the mtime: the file is hashed and refused. An edit that
    also restores the old mtime passes the cheap check; the full hash (`prepare check`) finds it."""
    from convirt_fast.data.manifest import ManifestError, load_manifest
    from convirt_fast.prepare.check import check_prepared

    _restamp_older(folder)
    path = folder / "sentences.idx"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # edited a second later
    with pytest.raises(ManifestError, match=r"sentences.idx: content hash .* does not match manifest.json"):
        load_manifest(folder)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the old time put back
    assert len(load_manifest(folder)) == 6
    with pytest.raises(ManifestError, match="sentences.idx: content hash"):
        load_manifest(folder, full_hash=True)
    with pytest.raises(ManifestError, match="sentences.idx: content hash"):
        check_prepared(folder)


def test_copy_without_times_is_hashed_once_and_accepted(prepared, tmp_path, count_hashes):
    import shutil

    from convirt_fast.data.manifest import load_manifest

    copy = shutil.copytree(prepared, tmp_path / "plain", copy_function=shutil.copy)  # new mtimes
    assert len(load_manifest(copy)) == 6
    assert sorted(count_hashes) == ["manifest.csv", "sentences.idx"]
    load_manifest(copy)  # verified in this process already
    assert len(count_hashes) == 2


def test_missing_sentence_index_is_refused(folder):
    from convirt_fast.data.manifest import ManifestError, load_manifest

    (folder / "sentences.idx").unlink()
    with pytest.raises(ManifestError, match=r"sentences.idx: missing, but manifest.json records it"):
        load_manifest(folder)


def test_older_folder_without_sizes_is_hashed_in_full_with_one_message(folder, count_hashes, caplog):
    import json

    from convirt_fast.data.manifest import ManifestError, load_manifest

    meta = {k: v for k, v in _meta(folder).items() if not k.endswith(("_size", "_mtime_ns"))}
    (folder / "manifest.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="convirt_fast.data.manifest"):
        load_manifest(folder)
        load_manifest(folder)
    assert sorted(count_hashes) == ["manifest.csv", "sentences.idx"]  # once, then remembered
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "records no file sizes and times" in said[0] and "prepare the folder again" in said[0]
    (folder / "sentences.idx").write_bytes(b"\0" * (folder / "sentences.idx").stat().st_size)
    with pytest.raises(ManifestError, match="sentences.idx: content hash"):
        load_manifest(folder)


# ----------------------------------------------------------------- bad values, refused early
@pytest.mark.parametrize("argv, message", [
    (["--loss.tau=0"], r"loss\.tau must be finite, tau > 0, got 0\.0"),
    (["--loss.tau=nan"], r"loss\.tau must be"),
    (["--loss.lam=1.5"], r"loss\.lam must be in \[0, 1\], got 1\.5"),
    (["--loss.lam=-0.1"], r"loss\.lam must be in \[0, 1\]"),
    (["--loss.backend=cuda"], r"loss\.backend must be one of"),
    (["--data.batch_size=1"], r"data\.batch_size must be >= 2 for the contrastive loss"),
    (["--data.batch_size=0", "--loss.gather=true"], r"data\.batch_size must be >= 1"),
    (["--data.max_length=2"], r"data\.max_length must be >= 3"),
    (["--optim.lr=0"], r"optim\.lr must be finite and > 0"),
    (["--optim.grad_clip=0"], r"optim\.grad_clip must be None or > 0"),
    (["--train.log_every=0"], r"train\.log_every must be >= 1, got 0"),
    (["--model.projection_dim=0"], r"model\.projection_dim must be >= 1"),
    (["--model.text_hidden=100", "--model.text_heads=3"],
     r"model\.text_hidden must be divisible by model\.text_heads=3"),
    (["--loss.tua=0.1"], r"unknown option --loss\.tua .*did you mean 'tau'"),
    (["--lossy.tau=0.1"], r"unknown option --lossy\.tau .*did you mean 'loss'"),
    (["--preset", "mimic-papr"], r"unknown preset 'mimic-papr'.*did you mean 'mimic-paper'"),
])
def test_bad_config_values_are_refused_naming_the_field(argv, message):
    from convirt_fast.cli import parse_args

    with pytest.raises(ValueError, match=message):
        parse_args(argv)


def test_batch_of_one_allowed_with_gather_and_config_round_trip():
    from convirt_fast.cli import parse_args
    from convirt_fast.config import Config

    cfg = parse_args(["--data.batch_size=1", "--loss.gather=true"])  # negatives come from the other ranks
    assert Config.from_dict(cfg.to_dict()) == cfg
    d = cfg.to_dict()
    d["loss"]["temperature"] = 0.1
    d["extra"] = {}
    with pytest.raises(ValueError, match=r"unknown fields \['extra', 'loss\.temperature'\]"):
        Config.from_dict(d)


def test_checkpoint_of_another_architecture_names_the_keys(tmp_path):
    from convirt_fast.checkpoint import CheckpointError, check_compatible
    from convirt_fast.config import ModelConfig

    saved, now = ModelConfig(image_encoder="resnet50").__dict__, ModelConfig(image_encoder="resnet18").__dict__
    check_compatible(tmp_path / "last.pt", dict(saved), dict(saved))  # the same: no error
    with pytest.raises(CheckpointError, match=r"last\.pt: a checkpoint of another architecture: "
                                              r"model\.image_encoder: saved 'resnet50', now 'resnet18'\. Resume"):
        check_compatible(tmp_path / "last.pt", dict(saved), dict(now))
    a, b = torch.nn.Linear(3, 4), torch.nn.Sequential(torch.nn.Linear(3, 5))
    with pytest.raises(CheckpointError) as e:
        check_compatible(tmp_path / "last.pt", saved, saved, saved_state=a.state_dict(), current_state=b.state_dict())
    text = str(e.value)
    assert "weights missing from the checkpoint: 0.bias, 0.weight" in text
    assert "weights this model lacks: bias, weight" in text
    same_keys = torch.nn.Linear(3, 5).state_dict()
    with pytest.raises(CheckpointError, match=r"weights of another shape: bias saved \(4,\) now \(5,\), weight saved"):
        check_compatible(tmp_path / "last.pt", saved, saved, saved_state=a.state_dict(), current_state=same_keys)


def test_is_checkpoint_says_no_to_other_files_and_raises_real_errors(tmp_path, monkeypatch):
    from convirt_fast.io import CHECKPOINT_FORMAT as FORMAT
    from convirt_fast.eval.encoders import _is_checkpoint

    ours, other, text, module = (tmp_path / n for n in ("ours.pt", "weights.pt", "text.pt", "module.pt"))
    torch.save({"format": FORMAT, "step": 1, "model": {}, "config": {}}, ours)
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    text.write_text("not a checkpoint\n")
    torch.save(torch.nn.Linear(2, 2), module)  # needs the full unpickler: refused by weights_only
    assert _is_checkpoint(ours)
    assert not any(_is_checkpoint(p) for p in (other, text, module))
    with pytest.raises(IsADirectoryError):
        _is_checkpoint(tmp_path)

    def unreadable(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(torch, "load", unreadable)
    with pytest.raises(OSError, match="Input/output error"):
        _is_checkpoint(ours)


@needs_interpreter
def test_fallback_inside_torch_compile(monkeypatch):
    """The fallback lives inside the custom ops: a compiled loss (fullgraph) falls back too."""
    from convirt_fast.kernels import triton_loss

    monkeypatch.setattr(cl, "_fallen_back", {})
    monkeypatch.setattr(cl, "TRITON_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(triton_loss, "grad_strip", _cannot_launch)
    img, txt = _pair(n=37, d=24, seed=5)
    compiled = torch.compile(lambda x, y: cl.convirt_loss(x, y, 0.1, 0.75, backend="auto"),
                             backend="aot_eager", fullgraph=True)
    x = img.clone().requires_grad_()
    with pytest.warns(RuntimeWarning, match="OutOfResources"):
        loss = compiled(x, txt)
        loss.backward()
    ref = _loss_and_grads("torch", img, txt)
    assert loss.item() == pytest.approx(ref[0].item(), rel=1e-5)
    torch.testing.assert_close(x.grad, ref[1] / 2.5, rtol=1e-4, atol=1e-7)
