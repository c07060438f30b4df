"""What a run leaves for people: metrics as JSON lines, optional TensorBoard, the loss plot."""

from __future__ import annotations

import json
import time
from pathlib import Path

METRICS = "metrics.jsonl"


class RunLog:
    """Rank 0 writes; other ranks' calls do nothing."""

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool = False, resume_step: int | None = None):
        self.path = Path(run_dir) / METRICS
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # Resumed: drop what was logged after the checkpoint, it will be logged again.
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ImportError("train.tensorboard=true needs the tensorboard package (pip install tensorboard)") from error
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, step: int, kind: str, **values) -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def setup(self, step: int, *, show: bool, **record) -> None:
        """The once-per-process `setup` record (loss path, FLOPs); printed too when `show`."""
        self.log(step, "setup", **record)
        if show:
            print(f"loss: {record['loss_input_dtype']} projections into the {record['loss_backend']} backend "
                  f"(fp32 inside); {record['flops_per_step'] / 1e9:.1f} GFLOP per step on each rank (counted)")

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class ProgressBar:
    """The training progress bar (rank 0 with train.progress; otherwise every call does nothing)."""

    def __init__(self, total: int, initial: int, *, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, record: dict | None) -> None:
        """A flushed window's figures beside the bar."""
        if self.bar is not None and record is not None:
            mfu = f", mfu={100 * record['mfu']:.1f}%" if record["mfu"] is not None else ""
            self.bar.set_postfix_str(f"loss={record['loss']:.3f}, pairs/s={record['pairs_per_s']:.0f}, "
                                     f"{record['step_ms']:.0f} ms/step{mfu}")

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plot_losses(records: list[dict], path: Path) -> Path | None:
    """Training and validation loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    val = [(r["step"], r["loss"]) for r in records if r["kind"] == "validation"]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train (mean over the logging interval)", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("ConVIRT loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
