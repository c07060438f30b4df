"""Resume as it happens, through the command line: `torchrun --standalone --nproc_per_node=2 -m
convirt_fast.train` on 2 gloo ranks, each with 2 DataLoader workers (DDP, the default with several
ranks; and FSDP2 with the global-batch loss, as the large-batch preset trains),

- every process (torchrun, both ranks, their workers) SIGKILLed from outside between two
  checkpoints, as a lost machine would be, then the same command run again: it resumes from the
  last checkpoint;
- `--max-restarts=1` with rank 1 SIGKILLing itself mid-run: torchrun restarts both ranks, which
  find the first attempt's run folder (default run name, no --train.run_name) and resume;

and both end with the weights, optimizer state and per-step losses of an uninterrupted run, bit
for bit. Faults come from a `sitecustomize` module this file writes and puts on PYTHONPATH
(CONVIRT_TEST_FAULT): no fault-injection code in the library.
"""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

MAX_STEPS, CHECKPOINT_EVERY = 12, 4
TIMEOUT_S = 240  # one torchrun launch; a hang fails the test instead of blocking CI

# Loaded by every Python process started with it on PYTHONPATH; acts only in torchrun's workers
# (RANK set) when CONVIRT_TEST_FAULT asks. Wraps Trainer.train_step, which starts step self.step + 1:
#   slow:<seconds>        every rank sleeps that long before each step (timing only, no numerics)
#   kill:<rank>:<steps>   in torchrun's first attempt, that rank SIGKILLs itself after <steps> steps
SITECUSTOMIZE = '''
import os

if os.environ.get("CONVIRT_TEST_FAULT") and "RANK" in os.environ:
    import signal
    import time

    from convirt_fast import trainer

    kind, *args = os.environ["CONVIRT_TEST_FAULT"].split(":")
    real_step = trainer.Trainer.train_step

    def train_step(self, micro_batches):
        if kind == "slow":
            time.sleep(float(args[0]))
        elif (kind == "kill" and int(os.environ["RANK"]) == int(args[0]) and self.step == int(args[1])
              and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0"):
            print(f"fault: rank {os.environ['RANK']} SIGKILLs itself after step {self.step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, micro_batches)

    trainer.Trainer.train_step = train_step
'''


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """SynthCXR prepared once (the runs would otherwise each wait on the preparation lock)."""
    from convirt_fast.prepare.synthetic import ensure_synthcxr

    folder = tmp_path_factory.mktemp("synth-cache")
    ensure_synthcxr(folder, n=120, seed=0, size=64, workers=1, progress=False)
    return folder


@pytest.fixture(scope="module")
def hooks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


PARALLEL = {"ddp": (), "fsdp-gather": ("--train.parallel=fsdp", "--loss.gather=true")}


def launch(out_dir: Path, cache: Path, hooks: Path, *, fault: str | None = None, run_name: str | None = "run",
           max_restarts: int = 0, parallel: str = "ddp") -> subprocess.Popen:
    """The CLI on 2 gloo ranks, tiny models, 2 DataLoader workers per rank, parallelism as
    PARALLEL[parallel]; stdout and stderr together in out_dir/log-<n>.txt."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            f"--max-restarts={max_restarts}", "-m", "convirt_fast.train",
            "--model.image_encoder=resnet18", "--model.text_layers=2", "--model.text_hidden=32",
            "--model.text_heads=2", "--model.vocab_size=300", "--model.freeze_text_layers=1",
            "--model.projection_dim=16",
            "--data.path=synthcxr", "--data.synth_n=120", "--data.synth_size=64", f"--data.cache_dir={cache}",
            "--data.batch_size=4", "--data.num_workers=2", "--data.max_length=24", "--data.augment.output_size=32",
            "--data.backend=torch", "--optim.warmup_steps=2",
            f"--train.max_steps={MAX_STEPS}", f"--train.checkpoint_every={CHECKPOINT_EVERY}", "--train.val_every=6",
            "--train.log_every=1", "--train.progress=false", "--train.evaluate=false", f"--train.out_dir={out_dir}",
            *([f"--train.run_name={run_name}"] if run_name else []), *PARALLEL[parallel]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           # torchrun shares its rendezvous store with the workers by default, and a restarted
           # attempt then reads the previous attempt's gloo/NCCL addresses from it and cannot
           # connect (pytorch/pytorch#135712, #167288); the README asks for this variable too.
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
           "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("CONVIRT_TEST_FAULT", None)
    if fault:
        env["CONVIRT_TEST_FAULT"] = fault
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / f"log-{len(list(out_dir.glob('log-*.txt')))}.txt", "w")
    with log:
        return subprocess.Popen(args, cwd=out_dir, env=env, stdout=log, stderr=subprocess.STDOUT)


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun, both ranks and their DataLoader workers at once, as a lost machine would
    (torchrun starts each rank in a session of its own: killing torchrun's group is not enough)."""
    tree = process_tree(proc.pid)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:  # orphans reaped by init
        time.sleep(0.05)
    assert not any(alive(pid) for pid in tree), "processes survived SIGKILL"


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_and_wait(out_dir: Path, cache: Path, hooks: Path, **kwargs) -> str:
    proc = launch(out_dir, cache, hooks, **kwargs)
    try:
        rc = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_all(proc)
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s; log: {newest_log(out_dir)}")
    text = newest_log(out_dir).read_text()
    assert rc == 0, f"torchrun exited with {rc}:\n{text[-4000:]}"
    return text


def newest_log(out_dir: Path) -> Path:
    return max(out_dir.glob("log-*.txt"), key=lambda p: int(p.stem.split("-")[1]))


def final_state(run_dir: Path) -> dict:
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    losses = {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"}
    return {"step": state["step"], "model": state["model"], "optimizer": state["optimizer"], "losses": losses,
            "steps_logged": [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                             if json.loads(line)["kind"] == "train"]}


def assert_same_tensors(got, expected, where: str = "") -> None:
    """Equal nested dicts/lists of tensors and values, bit for bit."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == expected.dtype and got.shape == expected.shape, where
        assert torch.equal(got, expected), f"{where}: max |diff| {(got.double() - expected.double()).abs().max()}"
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_same_tensors(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_same_tensors(g, e, f"{where}[{i}]")
    else:
        assert got == expected, where


def assert_same_run(got: dict, expected: dict) -> None:
    assert got["step"] == expected["step"] == MAX_STEPS
    assert got["steps_logged"] == list(range(1, MAX_STEPS + 1))  # each step once: the resumed part replaced
    assert got["losses"] == expected["losses"]
    assert_same_tensors(got["model"], expected["model"], "model")
    assert_same_tensors(got["optimizer"], expected["optimizer"], "optimizer")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache, hooks):
    """The final state of an uninterrupted run, per parallelism (each run once per module)."""
    runs = {}

    def run(parallel: str = "ddp") -> dict:
        if parallel not in runs:
            out = tmp_path_factory.mktemp(f"uninterrupted-{parallel}")
            run_and_wait(out, cache, hooks, parallel=parallel)
            runs[parallel] = final_state(out / "run")
        return runs[parallel]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("parallel", PARALLEL)
def test_sigkill_mid_run_then_rerun_is_exact(tmp_path, cache, hooks, uninterrupted, parallel):
    """SIGKILL to the whole process group between checkpoints (steps slowed so that the kill
    cannot miss), then the same command again: resumed, and the run an uninterrupted one."""
    proc = launch(tmp_path, cache, hooks, fault="slow:0.4", parallel=parallel)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + TIMEOUT_S
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # into the next steps: workers busy, batches prefetched
    kill_all(proc)
    assert last.exists(), f"no checkpoint before the kill:\n{newest_log(tmp_path).read_text()[-4000:]}"
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["step"]
    assert 0 < killed_at < MAX_STEPS, killed_at  # killed mid-run, after a checkpoint
    assert not (tmp_path / "run" / "summary.json").exists()

    text = run_and_wait(tmp_path, cache, hooks, parallel=parallel)
    assert f"resumed from {last} at step {killed_at}" in text
    assert_same_run(final_state(tmp_path / "run"), uninterrupted(parallel))


@pytest.mark.slow
def test_torchrun_restart_resumes_by_itself(tmp_path, cache, hooks, uninterrupted):
    """`torchrun --max-restarts=1`, rank 1 SIGKILLed after step 10 of the first attempt: torchrun
    restarts both ranks; they find the same run folder (the default name comes from the
    rendezvous id), resume from step 8 (the last checkpoint: 4, 6 (validation), 8), redo steps
    9 and 10 and finish, with the weights of the uninterrupted run."""
    text = run_and_wait(tmp_path, cache, hooks, fault="kill:1:10", run_name=None, max_restarts=1)
    assert "fault: rank 1 SIGKILLs itself after step 10" in text
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]  # both attempts, one folder
    assert run_dir.name.startswith("cpu-default-") and (run_dir / "summary.json").exists()
    assert f"resumed from {run_dir / 'checkpoints' / 'last.pt'} at step 8" in text
    assert json.loads((run_dir / "summary.json").read_text())["steps_this_run"] == MAX_STEPS - 8
    assert_same_run(final_state(run_dir), uninterrupted())


_NAME = "from convirt_fast.run_folder import default_run_name; print(default_run_name('p'))"


def test_default_run_name_is_the_same_in_every_restart_attempt(monkeypatch):
    """Under torchrun the default run folder is named by a rendezvous id the user chose, else (a
    uuid torchrun drew, or its default "none") by the start time of the torchrun process (the
    parent): each restart attempt, a new process, finds the same folder, and the folder reads
    <preset>-<date>-<time> as without torchrun."""
    from convirt_fast.run_folder import default_run_name

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-42")
    assert default_run_name("p") == "p-job-42"
    for drawn in ("none", "daab996c-5056-4fae-b084-86766e61d0ec"):
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", drawn)
        names = []
        for _ in range(2):  # two "attempts" of one parent (this process), a second apart
            names.append(subprocess.run([sys.executable, "-c", _NAME], capture_output=True, text=True,
                                        check=True).stdout.strip())
            time.sleep(1.1)
        assert names[0] == names[1]
        named = datetime.strptime(names[0][2:], "%Y%m%d-%H%M%S").timestamp()
        assert abs(named - start_time_by_ps(os.getpid())) <= 1.0  # ps rounds on its own
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    before = datetime.now().replace(microsecond=0)
    name = datetime.strptime(default_run_name("p")[2:], "%Y%m%d-%H%M%S")
    assert before <= name <= datetime.now()


def start_time_by_ps(pid: int) -> float:
    """A process's start time in seconds since the epoch, as ps reads it."""
    out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, check=True)
    return datetime.strptime(out.stdout.strip(), "%a %b %d %H:%M:%S %Y").timestamp()
