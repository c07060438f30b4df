"""The trainer on tiny models: DDP and FSDP2 on 2 gloo ranks, exact resume, checkpoints, the CLI."""

import faulthandler
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from convirt_fast.checkpoint import Checkpointer
from convirt_fast.io import CheckpointError, atomic_torch_save, load_checkpoint
from convirt_fast.cli import field_docs, parse_args
from convirt_fast.config import Config, DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
from convirt_fast.data.augment import AugmentSpec


def tiny_config(tmp_path, cache, **train) -> Config:
    train_cfg = dict(max_steps=6, val_every=3, log_every=1, checkpoint_every=3, out_dir=str(tmp_path),
                     run_name="run", progress=False, evaluate=False)
    train_cfg.update(train)
    return Config(
        preset="test",
        model=ModelConfig(image_encoder="resnet18", text_layers=2, text_hidden=32, text_heads=2, vocab_size=300,
                          freeze_text_layers=1, projection_dim=16, channels_last=False),
        data=DataConfig(path="synthcxr", synth_n=60, synth_size=64, cache_dir=str(cache), batch_size=4,
                        num_workers=0, max_length=24, augment=AugmentSpec(output_size=32), backend="torch"),
        loss=LossConfig(tau=0.1, lam=0.75),
        optim=OptimConfig(lr=1e-3, schedule="plateau"),
        train=TrainConfig(**train_cfg),
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from convirt_fast.prepare.synthetic import ensure_synthcxr

    folder = tmp_path_factory.mktemp("synth-cache")
    ensure_synthcxr(folder, n=60, seed=0, size=64, workers=1, progress=False)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parameters_of(model) -> dict[str, torch.Tensor]:
    """Full (unsharded) parameters, on every rank."""
    out = {}
    for name, p in model.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name.replace("module.", "")] = t.detach().cpu().clone()
    return out


def _rank_main(rank, world, port, cfg_dict, out_dir):
    faulthandler.enable(all_threads=True)  # a native abort (as test_loss_distributed saw) prints where
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from convirt_fast.distributed import all_gather_objects, barrier, cleanup
    from convirt_fast.trainer import Trainer

    trainer = Trainer(Config.from_dict(cfg_dict))
    units = fsdp_units(trainer.train_model) if trainer.parallel == "fsdp" else None
    # The loss on one fixed batch (seen in training), before and after: a noise-free "it learns".
    fixed = next(iter(trainer.loader))
    trainer.loader.set_epoch(0)

    def fixed_loss():
        # Training-mode BatchNorm (batch statistics: its running averages mean little after a few
        # steps) without dropout, and without letting the measurement touch the running averages.
        model = trainer.train_model
        buffers = [b.detach().clone() for b in model.buffers()]
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.eval()
        with torch.no_grad():
            value = trainer._loss(fixed).item()
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
        model.train()
        return value

    summary = trainer.fit()
    # One more optimizer step, on the fixed batch: through DDP's or FSDP's gradient sync it must
    # lower that batch's loss (a wrong sign, scale or missing sync would not).
    before = fixed_loss()
    trainer.train_step([fixed])
    after = fixed_loss()
    params = parameters_of(trainer.train_model)
    checksums = {k: (v.double().sum().item(), v.double().square().sum().item()) for k, v in params.items()}
    every_rank = all_gather_objects(checksums)
    if rank == 0:
        torch.save(params, os.path.join(out_dir, "params.pt"))
        losses = [r["loss"] for r in trainer.log.records() if r["kind"] == "train"]
        with open(os.path.join(out_dir, "result.json"), "w") as f:
            json.dump({"summary": summary, "losses": losses, "fixed_batch_loss": [before, after], "fsdp_units": units,
                       "ranks_agree": all(c == every_rank[0] for c in every_rank)}, f)
    barrier()  # leave together: a rank tearing gloo down while the other still works can abort
    cleanup()


def fsdp_units(model: nn.Module) -> list[list[str]]:
    """The FSDP2 units of a wrapped model: for each, the names of the modules it was applied to."""
    from torch.distributed.fsdp import FSDPModule

    names = {module: name or "<root>" for name, module in model.named_modules()}
    units: dict[int, list[str]] = {}
    for module, name in names.items():
        if isinstance(module, FSDPModule):
            units.setdefault(id(module._get_fsdp_state()), []).append(name)
    return list(units.values())



def run_two_ranks(cfg: Config, out_dir) -> dict:
    mp.spawn(_rank_main, args=(2, free_port(), cfg.to_dict(), str(out_dir)), nprocs=2, join=True)
    result = json.loads((out_dir / "result.json").read_text())
    result["params"] = torch.load(out_dir / "params.pt", weights_only=True)
    return result


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory, cache):
    runs = {}
    for parallel in ("ddp", "fsdp"):
        out = tmp_path_factory.mktemp(parallel)
        cfg = tiny_config(out, cache, parallel=parallel, max_steps=8, val_every=4, checkpoint_every=4)
        runs[parallel] = run_two_ranks(cfg, out)
    return runs


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_learn_and_agree(two_rank_runs, parallel):
    run = two_rank_runs[parallel]
    assert run["summary"]["parallel"] == parallel and run["summary"]["world_size"] == 2
    assert run["ranks_agree"]
    losses = run["losses"]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    before, after = run["fixed_batch_loss"]
    assert after < before - 0.05


def test_fsdp_and_ddp_reach_the_same_parameters(two_rank_runs):
    ddp, fsdp = two_rank_runs["ddp"]["params"], two_rank_runs["fsdp"]["params"]
    assert ddp.keys() == fsdp.keys()
    for name in ddp:
        assert torch.allclose(ddp[name], fsdp[name], atol=2e-4, rtol=1e-3), name


def test_fsdp_units_are_blocks_not_layers(two_rank_runs):
    """One unit per ResNet stage and BERT layer, the root, and one unit for all BatchNorms (kept in
    fp32) -- not one per BatchNorm (ResNet-18 has 20, ResNet-50 53)."""
    units = two_rank_runs["fsdp"]["fsdp_units"]
    norm_units = [u for u in units if len(u) > 1]
    assert len(norm_units) == 1 and len(norm_units[0]) == 20, norm_units
    assert all(name.split(".")[-1].startswith("bn") or name.endswith("downsample.1") for name in norm_units[0])
    blocks = sorted(name for u in units if len(u) == 1 for name in u)
    assert blocks == ["<root>", *(f"image_encoder.layer{i}" for i in range(1, 5)),
                      "text_encoder.encoder.layer.0", "text_encoder.encoder.layer.1"]


def count_host_reads(monkeypatch) -> dict[str, int]:
    """From now on, count every Tensor method that brings a value to the host (on a GPU each one
    waits for the device to finish all queued work)."""
    counts: dict[str, int] = {}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("learnable_tau", [False, True])
def test_train_step_reads_nothing_on_the_host(tmp_path, cache, monkeypatch, learnable_tau):
    """The step is sync-free: no host read between optimizer steps; the log point reads the whole
    window at once (one read, plus the temperature when it is learnable)."""
    from convirt_fast.trainer import Trainer

    cfg = tiny_config(tmp_path, cache, log_every=4, grad_accum=2, on_nonfinite="stop")
    cfg.loss.learnable_tau = learnable_tau
    trainer = Trainer(cfg)
    batches = trainer.batches()
    steps = [[next(batches), next(batches)] for _ in range(4)]
    trainer.train_step(steps[0])  # the first step of a process counts its FLOPs and logs the loss path
    trainer.progress.step += 1
    reads = count_host_reads(monkeypatch)
    for micro in steps[1:]:
        trainer.train_step(micro)
        trainer.progress.step += 1
    assert reads == {}, f"host reads inside train_step: {reads}"
    record = trainer.flush(window_start=time.perf_counter() - 1.0)
    assert sum(reads.values()) == 1, reads  # the losses, flags (and a learnable tau) in one transfer
    assert math.isfinite(record["loss"]) and record["step_ms"] >= 250.0  # 4 steps, timed >= 1 s
    assert record["pairs_per_s"] * record["step_ms"] == pytest.approx(1000 * 8, rel=1e-2)  # 8 pairs a step
    assert record["mfu"] is None  # a CPU has no peak in the table: no MFU rather than a guessed one
    assert isinstance(record["tau"], float)


def test_metrics_have_step_time_and_flops(tmp_path, cache):
    from convirt_fast.trainer import Trainer

    trainer = Trainer(tiny_config(tmp_path, cache, max_steps=4, log_every=2, val_every=10, checkpoint_every=10))
    summary = trainer.fit()
    records = trainer.log.records()
    setup = [r for r in records if r["kind"] == "setup"]
    assert len(setup) == 1 and setup[0]["loss_input_dtype"] == "float32" and setup[0]["loss_backend"] == "torch"
    # ResNet-18 at 32 px + a 2-layer BERT, batch 4: forward + backward, counted by FlopCounterMode
    assert 1e7 < setup[0]["flops_per_step"] < 1e10
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 4]  # the first step (compilation, FLOP count) on its own
    assert all(r["step_ms"] > 0 and r["pairs_per_s"] > 0 and "mfu" in r for r in train)
    assert summary["mfu"] is None and summary["steps"] == 4


def test_nonfinite_gradient_behind_a_finite_loss_is_skipped(tmp_path, cache):
    """A finite loss whose backward overflows: the step is skipped on the device (no NaN weights)."""
    from convirt_fast.trainer import Trainer

    trainer = Trainer(tiny_config(tmp_path, cache, on_nonfinite="skip", log_every=2))
    batches = trainer.batches()
    trainer.train_step([next(batches)])  # a normal step first (FLOP count, optimizer state)
    trainer.progress.step += 1
    before = parameters_of(trainer.train_model)
    weight = trainer.model.image_projection.parameters().__next__()
    handle = weight.register_hook(lambda g: g * math.inf)
    trainer.train_step([next(batches)])
    handle.remove()
    trainer.progress.step += 1
    assert all(torch.equal(before[k], v) for k, v in parameters_of(trainer.train_model).items())
    record = trainer.flush(window_start=time.perf_counter())
    assert trainer.progress.skipped_nonfinite == 1 and math.isfinite(record["loss"])


def test_stop_leaves_the_weights_of_the_step_before(tmp_path, cache, monkeypatch):
    """on_nonfinite=stop reads the flag only at the log point; the steps queued after the bad one
    must not change the weights either (the flag stays set until the stop)."""
    from convirt_fast.trainer import NonFiniteLoss, Trainer

    trainer = Trainer(tiny_config(tmp_path, cache, log_every=4, val_every=10, checkpoint_every=10))
    real = trainer.loss_fn.forward
    calls = []

    def first_nan(v, u):
        calls.append(1)
        loss = real(v, u)
        return loss * math.nan if len(calls) == 2 else loss  # step 1 of 0..3

    monkeypatch.setattr(trainer.loss_fn, "forward", first_nan)
    batches = trainer.batches()
    trainer.train_step([next(batches)])
    trainer.progress.step += 1
    after_step_0 = parameters_of(trainer.train_model)
    for _ in range(3):
        trainer.train_step([next(batches)])
        trainer.progress.step += 1
    with pytest.raises(NonFiniteLoss, match="step 1 "):
        trainer.flush(window_start=time.perf_counter())
    assert all(torch.equal(after_step_0[k], v) for k, v in parameters_of(trainer.train_model).items())


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H200", 989), ("NVIDIA H200 NVL", 835), ("NVIDIA H100 PCIe", 756),
    ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA L40", 181), ("NVIDIA L40S", 362), ("NVIDIA L4", 121),
    ("Tesla T4", None)])
def test_peak_table_matches_whole_names(monkeypatch, name, expected):
    from convirt_fast.throughput import peak_flops, utilisation

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    peak = peak_flops(torch.device("cuda", 0), torch.bfloat16)
    assert peak == (None if expected is None else expected * 1e12)
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None
    if peak is not None:  # 10 steps of 1e14 FLOPs in 2 s on this device
        assert utilisation(1e14, 10, 2.0, peak) == pytest.approx(5e14 / peak)


@pytest.mark.gpu
def test_gpu_train_step_never_syncs(tmp_path, cache):
    """On a GPU, CUDA's own sync detector (set_sync_debug_mode) raises on any synchronising call
    that torch makes between optimizer steps: in the loader's batch (decode, augmentation, copies)
    and in the step (a host read, a blocking copy). Warm-up steps (Triton autotuning) excluded."""
    from convirt_fast.trainer import Trainer

    trainer = Trainer(tiny_config(tmp_path, cache, log_every=8))
    batches = trainer.batches()
    for _ in range(3):
        trainer.train_step([next(batches)])
        trainer.progress.step += 1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step([next(batches)])
            trainer.progress.step += 1
    finally:
        torch.cuda.set_sync_debug_mode("default")
    record = trainer.flush(window_start=time.perf_counter())
    assert math.isfinite(record["loss"])


def test_resume_is_exact(tmp_path, cache):
    straight = tiny_config(tmp_path / "a", cache, max_steps=6)
    from convirt_fast.trainer import Trainer

    a = Trainer(straight)
    a.fit()
    expected = parameters_of(a.train_model)
    first = tiny_config(tmp_path / "b", cache, max_steps=3)
    Trainer(first).fit()
    second = tiny_config(tmp_path / "b", cache, max_steps=6)  # same run folder: resume=auto
    b = Trainer(second)
    assert b.step == 3
    b.fit()
    got = parameters_of(b.train_model)
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6), name
    losses_a = [r["loss"] for r in a.log.records() if r["kind"] == "train"]
    losses_b = [r["loss"] for r in b.log.records() if r["kind"] == "train"]
    assert losses_a == pytest.approx(losses_b, abs=1e-6)


def test_end_to_end_outputs(tmp_path, cache):
    from safetensors.torch import load_file
    from torchvision.models import resnet18

    from convirt_fast.models import expand_stem
    from convirt_fast.post_train import format_summary, post_train
    from convirt_fast.trainer import Trainer

    cfg = tiny_config(tmp_path, cache, max_steps=4, val_every=2, evaluate=True)
    trainer = Trainer(cfg)
    summary = post_train(trainer.run_dir, trainer.fit())
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "summary.json", "loss.png", "retrieval.json",
                 "checkpoints/last.pt", "checkpoints/best.pt", "export/image_encoder.safetensors"):
        assert (run / name).exists(), name
    assert summary["retrieval"]["text_to_image"]["overall"]["P@10"] >= 0
    assert "retrieval over" in format_summary(summary)
    net = resnet18()
    net.fc = torch.nn.Identity()
    net.load_state_dict(expand_stem(load_file(run / "export/image_encoder.safetensors")), strict=True)
    assert Config.from_dict(json.loads((run / "config.json").read_text())).model == cfg.model


def test_nonfinite_loss_stops_with_step_and_studies(tmp_path, cache, monkeypatch):
    from convirt_fast.trainer import NonFiniteLoss, Trainer

    trainer = Trainer(tiny_config(tmp_path, cache))
    monkeypatch.setattr(trainer.loss_fn, "forward", lambda v, u: (v.sum() + u.sum()) * math.nan)
    with pytest.raises(NonFiniteLoss, match=r"step 0 .*studies of this rank's batch: \['S"):
        trainer.fit()


def test_nonfinite_loss_skips_when_asked(tmp_path, cache, monkeypatch):
    from convirt_fast.trainer import Trainer

    trainer = Trainer(tiny_config(tmp_path, cache, on_nonfinite="skip", max_steps=3, val_every=10))
    real = trainer.loss_fn.forward
    calls = []

    def sometimes_nan(v, u):
        calls.append(1)
        loss = real(v, u)
        return loss * math.nan if len(calls) == 2 else loss

    monkeypatch.setattr(trainer.loss_fn, "forward", sometimes_nan)
    before = parameters_of(trainer.train_model)
    summary = trainer.fit()
    assert summary["skipped_nonfinite"] == 1 and summary["steps"] == 3
    after = parameters_of(trainer.train_model)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------------------------
# Checkpoint files


class Plain:
    """A stateful object for the Checkpointer: its state is the dict it holds."""

    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


def test_truncated_and_foreign_checkpoints(tmp_path):
    ckpt = Checkpointer(tmp_path, model=Plain({"w": torch.ones(1000)}))
    ckpt.save(1, {})
    data = ckpt.last.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: not a convirt_fast checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    assert load_checkpoint(ckpt.last)["step"] == 1


_WRITER = """
import sys, torch
from convirt_fast.io import CHECKPOINT_FORMAT, atomic_torch_save
big = {"w": torch.randn(64, 1024, 1024)}  # 256 MB: the kill lands mid-write
print("writing", flush=True)
while True:
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "step": 2, "model": big, "config": {}}, sys.argv[1] + "/last.pt")
"""


def test_kill_while_writing_keeps_the_previous_checkpoint(tmp_path):
    ckpt = Checkpointer(tmp_path, model=Plain({"w": torch.zeros(3)}))
    ckpt.save(1, {})
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    deadline = time.time() + 60
    while not list(tmp_path.glob(".last.pt.*.tmp")) and time.time() < deadline:
        time.sleep(0.01)
    assert list(tmp_path.glob(".last.pt.*.tmp")), "the writer never started a temporary file"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(ckpt.last)  # whatever the kill interrupted, last.pt is whole
    assert state["step"] in (1, 2)


def test_atomic_save_leaves_no_temporary_on_error(tmp_path):
    with pytest.raises(Exception):
        atomic_torch_save({"f": lambda: None}, tmp_path / "x.pt")  # lambdas do not pickle
    assert not list(tmp_path.iterdir())


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    from convirt_fast.io import atomic_folder

    target = tmp_path / "tokenizer"
    with atomic_folder(target) as tmp:
        (tmp / "a.json").write_text("1")
        assert not target.exists()  # nothing visible before the folder is complete
    assert (target / "a.json").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "b.json").write_text("2")
            raise RuntimeError("killed while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]  # no temporary left behind
    assert [p.name for p in target.iterdir()] == ["a.json"]  # the old folder, untouched
    with atomic_folder(target) as tmp:
        (tmp / "b.json").write_text("2")
    assert [p.name for p in target.iterdir()] == ["b.json"]  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]


# ----------------------------------------------------------------------------------------------
# Command line


def test_cli_overrides_and_help(capsys):
    cfg = parse_args(["--preset", "mimic-paper", "--data.batch_size=64", "--data.augment.crop_area=(0.5,1.0)",
                      "--model.image_weights", "none", "--train.compile=true", "--optim.grad_clip=1.0"])
    assert cfg.preset == "mimic-paper" and cfg.data.batch_size == 64 and cfg.data.augment.crop_area == (0.5, 1.0)
    assert cfg.model.image_weights is None and cfg.train.compile is True and cfg.optim.grad_clip == 1.0
    assert cfg.optim.lr == 1e-4 and cfg.train.val_every == 5000 and cfg.loss.lam == 0.75
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for section in (ModelConfig, DataConfig, LossConfig, OptimConfig, TrainConfig, AugmentSpec):
        docs = field_docs(section)
        assert docs, section
        for name, doc in docs.items():
            nested = f".{name}." in text  # a nested section lists its own fields
            assert nested or (f".{name}=" in text and doc[:40] in " ".join(text.split())), name


@pytest.mark.parametrize("argv, message", [
    (["--data.batch_size=lots"], "expected int"),
    (["--data.nope=1"], "unknown option --data.nope"),
    (["--preset", "huge"], "unknown preset"),
    (["--train.parallel=mpi"], "train.parallel must be one of"),
    (["--loss.tau=-1"], "tau > 0"),
    (["positional"], "unexpected argument"),
])
def test_cli_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_args(argv)


def test_presets():
    large = parse_args(["--preset", "mimic-large-batch"])
    assert large.loss.gather and large.train.parallel == "fsdp"
    default = parse_args([])
    assert default.preset == "cpu-default" and default.data.path == "synthcxr"
    # The paper presets keep the paper's t_v; cpu-default narrows its ranges, never widens them.
    from convirt_fast.data.augment import AugmentSpec

    paper, light = parse_args(["--preset", "mimic-paper"]).data.augment, default.data.augment
    assert paper == AugmentSpec()
    for name in ("crop_area", "crop_ratio", "brightness", "contrast", "scale"):
        assert getattr(paper, name)[0] <= getattr(light, name)[0] <= getattr(light, name)[1] <= getattr(paper, name)[1]
    assert light.rotation_deg <= paper.rotation_deg and light.translate <= paper.translate and light.flip_p == paper.flip_p
