"""`python -m convirt_fast.sweep`: a tiny grid of 2 points trained through torchrun, the table,
JSON and plot it writes, resuming (nothing rerun), a point shared by two sweeps, and bad grids
refused before anything runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convirt_fast.cli import parse_args
from convirt_fast.sweep import config_diff, config_hash, main, parse_grid, split_values

REPO = Path(__file__).resolve().parents[1]


def tiny(cache: Path) -> list[str]:
    return ["--data.synth_n=120", "--data.synth_size=64", f"--data.cache_dir={cache}", "--data.batch_size=8",
            "--data.num_workers=0", "--train.max_steps=3", "--train.val_every=3", "--model.vocab_size=300"]


def sweep(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "convirt_fast.sweep", *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=REPO)


def test_split_values_keeps_bracketed_commas():
    assert split_values("0.01,0.1,1") == ["0.01", "0.1", "1"]
    assert split_values("(0.9,1.0),(0.5, 1.0)") == ["(0.9,1.0)", "(0.5, 1.0)"]
    with pytest.raises(ValueError, match="empty value"):
        split_values("0.1,,1")


def test_grid_is_a_product_in_command_line_order():
    keys, points = parse_grid(["loss.tau=0.1,1", "model.projection=mlp,linear"])
    assert keys == ["loss.tau", "model.projection"]
    assert [p.label for p in points] == ["loss.tau=0.1, model.projection=mlp", "loss.tau=0.1, model.projection=linear",
                                         "loss.tau=1, model.projection=mlp", "loss.tau=1, model.projection=linear"]
    with pytest.raises(ValueError, match="section.field"):
        parse_grid(["tau=0.1"])
    with pytest.raises(ValueError, match="twice"):
        parse_grid(["loss.tau=0.1", "loss.tau=1"])


def test_point_identity_is_the_resolved_config_without_seed_or_folder():
    a = parse_args(["--loss.tau=0.1", "--train.seed=3", "--train.out_dir=x"]).to_dict()
    b = parse_args(["--train.progress=false"]).to_dict()  # tau 0.1 is the preset's value
    c = parse_args(["--loss.tau=1"]).to_dict()
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert config_diff(c, b) == {"loss.tau": 1.0}
    assert config_diff(a, b) == {}


def test_bad_grid_fails_before_running(tmp_path, capsys):
    assert main(["--grid", "loss.tua=0.1,1", "--seeds", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "loss.tua" in err and "did you mean 'tau'" in err
    assert main(["--grid", "loss.tau=0.1,-1", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "loss.tau=-1" in capsys.readouterr().err
    assert not (tmp_path / "points").exists()  # nothing written: the first point was valid, the second not


def test_tiny_sweep_trains_tabulates_and_resumes(tmp_path):
    out, cache = tmp_path / "sweeps", tmp_path / "cache"
    first = sweep(["--grid", "loss.tau=0.1,1", "--seeds", "0", "--out", str(out), *tiny(cache)])
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "2 to run" in first.stdout
    result = json.loads((out / "loss.tau" / "results.json").read_text())
    assert [r["values"]["loss.tau"] for r in result["rows"]] == ["0.1", "1"]
    for row in result["rows"]:
        assert row["seeds"] == [0]
        for metric in ("t2i_P@10", "i2i_P@10", "val_loss"):
            assert 0 <= row["metrics"][metric]["mean"] <= 10
        run = Path(row["runs"][0]["folder"])
        assert json.loads((run / "config.json").read_text())["loss"]["tau"] == float(row["values"]["loss.tau"])
        assert json.loads((run / "summary.json").read_text())["steps"] == 3
    table = (out / "loss.tau" / "table.md").read_text()
    assert "| 0.1 |" in table and "| 1 |" in table and "text->image P@10" in table
    assert (out / "loss.tau" / "plot.png").stat().st_size > 1000
    summaries = {p: p.stat().st_mtime_ns for p in out.glob("points/*/seed0/summary.json")}
    assert len(summaries) == 2

    # The same command again: nothing is rerun. A second sweep over lambda = 0.75 (the preset's
    # value, so the same config as tau = 0.1) reuses that run and trains only lambda = 1.
    again = sweep(["--grid", "loss.tau=0.1,1", "--seeds", "0", "--out", str(out), *tiny(cache)])
    assert again.returncode == 0 and "2 already done, 0 to run" in again.stdout
    other = sweep(["--grid", "loss.lam=0.75,1", "--seeds", "0", "--out", str(out), *tiny(cache)])
    assert other.returncode == 0, other.stderr[-3000:]
    assert "1 already done, 1 to run" in other.stdout
    assert {p: p.stat().st_mtime_ns for p in summaries} == summaries
    assert len(list(out.glob("points/*/seed0/summary.json"))) == 3

    # --probe on a finished point: only the probe runs (the run and a random init of its
    # architecture, linear at 1 %), and the run's recorded time keeps its training part (set
    # to 10,000 s here, so that a probe time alone could not pass for it).
    record = Path(result["rows"][0]["runs"][0]["folder"]) / "sweep_run.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "wall_s": 10_000.0}))
    started = time.perf_counter()
    probed = sweep(["--grid", "loss.tau=0.1", "--seeds", "0", "--probe", "--probe-seeds", "1", "--out", str(out),
                    "--name", "probed", *tiny(cache)])
    elapsed = time.perf_counter() - started
    assert probed.returncode == 0, probed.stdout[-3000:] + probed.stderr[-3000:]
    assert "0 already done, 1 to run" in probed.stdout
    (row,) = json.loads((out / "probed" / "results.json").read_text())["rows"]
    for metric in ("probe_1%", "probe_1%_random"):
        assert 0 <= row["metrics"][metric]["mean"] <= 1, row["metrics"]
    (run,) = row["runs"]
    assert 10_000 < run["wall_s"] < 10_000 + elapsed
    assert {p: p.stat().st_mtime_ns for p in summaries} == summaries  # no training
