"""Soak: resident memory over a long run on a tiny set, to catch leaks (preprocessing ones above all).

    pytest benchmarks/bench_soak.py --benchmark-only                          # 2,000 steps
    CONVIRT_SOAK_STEPS=300 CONVIRT_SOAK_WARMUP=100 pytest benchmarks/bench_soak.py --benchmark-only

The real `Trainer.fit` (in this process, one rank) on SynthCXR with 256 studies at 64 px, the
cpu-default models (ResNet-18, 2-layer BERT), batch CONVIRT_SOAK_BATCH (8), 2 DataLoader workers
(persistent, augmenting on the CPU), validation and a checkpoint every 500 steps: thousands of
steps are hundreds of epochs, so every batch and sentence draw is made again and again. Every
CONVIRT_SOAK_EVERY (100) steps: resident memory (RSS) of this process and of its DataLoader workers
(summed; forked workers share pages, so the sum counts those twice), and PSS of the whole tree
(shared pages divided among the processes sharing them) where /proc has smaps_rollup.

Pass criterion (asserted): the total RSS at the end and its maximum after CONVIRT_SOAK_WARMUP
(500) steps are within 5 % of the total at that step. Warm-up ends at the first validation (step
500), which starts the validation loader's persistent workers: a step in the curve that is new
processes, not growth. extra_info: the curve, the growth of each
series after warm-up, steps, seconds, the load average before and after (timing on a shared
machine is not a throughput figure). Writes benchmarks/results/bench_soak_<cpu|cuda>.png.
"""

import os
from pathlib import Path

from conftest import RESULTS_DIR
from convirt_fast.presets import cpu_default

STEPS = int(os.environ.get("CONVIRT_SOAK_STEPS", "2000"))
EVERY = int(os.environ.get("CONVIRT_SOAK_EVERY", "100"))
WARMUP = int(os.environ.get("CONVIRT_SOAK_WARMUP", "500"))
BATCH = int(os.environ.get("CONVIRT_SOAK_BATCH", "8"))
WORKERS = 2
MAX_GROWTH = 0.05


def _status_kb(pid: int, field: str) -> int:
    """A "<field>: <n> kB" line of /proc/<pid>/status (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        out.append(todo.pop())
        todo.extend(children.get(out[-1], []))
    return out


def memory_sample(step: int) -> dict:
    """MiB: this process's RSS, its descendants' RSS summed (the DataLoader workers), the total,
    and the PSS of the whole tree (None without smaps_rollup)."""
    me = os.getpid()
    workers = _descendants(me)
    try:
        import psutil

        main_kb = psutil.Process(me).memory_info().rss // 1024
    except ImportError:
        main_kb = _status_kb(me, "VmRSS")
    workers_kb = sum(_status_kb(p, "VmRSS") for p in workers)
    pss = [_pss_kb(p) for p in [me, *workers]]
    return {"step": step, "rss_main_mib": round(main_kb / 1024, 1), "rss_workers_mib": round(workers_kb / 1024, 1),
            "rss_total_mib": round((main_kb + workers_kb) / 1024, 1), "workers": len(workers),
            "pss_total_mib": None if None in pss else round(sum(pss) / 1024, 1)}


def growth(curve: list[dict], key: str) -> dict:
    """After warm-up: (end - warm) / warm and (max - warm) / warm, warm the value at WARMUP."""
    after = [s[key] for s in curve if s["step"] >= WARMUP and s[key] is not None]
    if not after:
        return {}
    warm = after[0]
    return {"at_warmup_mib": warm, "end_mib": after[-1], "max_mib": max(after),
            "end_growth": round((after[-1] - warm) / warm, 4), "max_growth": round((max(after) - warm) / warm, 4)}


def plot(curve: list[dict], result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s["step"] for s in curve]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label in (("rss_total_mib", "RSS, main + workers"), ("rss_main_mib", "RSS, main process"),
                       ("rss_workers_mib", "RSS, child processes (DataLoader workers), summed"),
                       ("pss_total_mib", "PSS, whole tree")):
        if all(s[key] is not None for s in curve):
            ax.plot(steps, [s[key] for s in curve], marker=".", lw=1.2, label=label)
    warm = result["growth"]["rss_total_mib"]["at_warmup_mib"]
    ax.axvline(WARMUP, color="grey", ls=":", lw=1)
    for before, after in zip(curve, curve[1:]):  # e.g. the validation loader's workers starting
        if after["workers"] != before["workers"]:
            ax.annotate(f"{before['workers']} -> {after['workers']} child processes",
                        (after["step"], after["rss_total_mib"]), xytext=(8, -14), textcoords="offset points",
                        fontsize=8)
    ax.axhspan(warm, warm * (1 + MAX_GROWTH), color="green", alpha=0.08, label="+5 % of the total at warm-up")
    g = result["growth"]["rss_total_mib"]
    ax.set_title(f"Soak: {result['steps']} steps, SynthCXR 256 studies at 64 px, batch {BATCH}; total RSS "
                 f"{100 * g['end_growth']:+.1f} % (max {100 * g['max_growth']:+.1f} %) after step {WARMUP}", fontsize=9)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def test_soak_memory(benchmark, tmp_path):
    import torch

    from convirt_fast.trainer import Trainer

    cfg = cpu_default()
    cfg.data.synth_n, cfg.data.synth_size, cfg.data.cache_dir = 256, 64, str(tmp_path / "cache")
    cfg.data.batch_size, cfg.data.num_workers = BATCH, WORKERS
    cfg.train.max_steps, cfg.train.val_every, cfg.train.checkpoint_every = STEPS, 500, 500
    cfg.train.out_dir, cfg.train.run_name, cfg.train.progress, cfg.train.evaluate = str(tmp_path), "soak", False, False
    trainer = Trainer(cfg)
    curve: list[dict] = []
    real_step = trainer.train_step

    def train_step(micro_batches):  # the step that starts at trainer.step: sample before it
        if trainer.step % EVERY == 0:
            curve.append(memory_sample(trainer.step))
        real_step(micro_batches)

    trainer.train_step = train_step  # Trainer.fit calls self.train_step: this instance's wins
    load_before = os.getloadavg()
    summary = benchmark.pedantic(trainer.fit, rounds=1, iterations=1)
    curve.append(memory_sample(trainer.step))
    result = {"steps": summary["steps"], "epochs": trainer.loader.epoch,
              "growth": {k: growth(curve, k) for k in ("rss_total_mib", "rss_main_mib", "rss_workers_mib",
                                                       "pss_total_mib")}}
    path = RESULTS_DIR / f"bench_soak_{'cuda' if torch.cuda.is_available() else 'cpu'}.png"
    plot(curve, result, path)
    benchmark.extra_info.update(
        steps=summary["steps"], epochs=trainer.loader.epoch, seconds=summary["seconds"],
        pairs_per_s=summary["pairs_per_s"], batch_size=BATCH, num_workers=WORKERS, synth_n=256, image_px=64,
        models="cpu-default: resnet18 + 2-layer BERT (hidden 128)", every=EVERY, warmup_step=WARMUP,
        max_growth_allowed=MAX_GROWTH, growth=result["growth"], plot=path.name,
        load_average_before=[round(x, 2) for x in load_before],
        load_average_after=[round(x, 2) for x in os.getloadavg()],
        torch_threads=torch.get_num_threads(), curve=curve)
    assert summary["steps"] == STEPS
    g = result["growth"]["rss_total_mib"]
    assert g["end_growth"] <= MAX_GROWTH and g["max_growth"] <= MAX_GROWTH, g
