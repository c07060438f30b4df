"""Shared by every benchmark suite: one machine-readable JSON of results per suite, and a table.

    pytest benchmarks/ --benchmark-only                     # all suites; GPU cases skip on a CPU

After the run, `benchmarks/results/<suite>_<cpu|cuda>.json` (folder: $CONVIRT_BENCH_DIR if set)
holds the date, the device (GPU name or CPU model), Python/torch/Triton versions, and per case: its
name and parameters, median/min/mean/stddev in seconds, rounds, and the case's
`benchmark.extra_info`; skipped cases with their reason.

Ratios to a baseline measured in the same run, for any suite: a case that puts "group" (what it is
compared within, e.g. "full N=4096"), "provider" and "baselines" (provider names, in order of
preference) in its extra_info gets "baseline" and "speedup" (baseline median / its median: > 1 is
faster) written beside them: against the first listed baseline when that ran in the group, else
against the fastest of the other listed baselines that ran (the first may have been skipped, e.g.
for lack of memory).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections import defaultdict
from pathlib import Path

import pytest

RESULTS_DIR = Path(os.environ.get("CONVIRT_BENCH_DIR", Path(__file__).resolve().parent / "results"))
_records: dict[str, list[dict]] = defaultdict(list)


def _machine() -> dict:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        info["device_kind"] = "cuda" if torch.cuda.is_available() else "cpu"
        info["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else info["cpu"]
    except ImportError:
        info["device_kind"], info["device"] = "cpu", info["cpu"]
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def _suite(item) -> str:
    return Path(str(item.fspath)).stem


@pytest.fixture(autouse=True)
def _record_benchmark(request):
    """After each case: its timings and extra_info, for the suite's JSON."""
    if "benchmark" not in request.fixturenames:
        yield
        return
    bench = request.getfixturevalue("benchmark")  # now: it is torn down before this fixture
    yield
    stats = getattr(getattr(bench, "stats", None), "stats", None)
    if stats is None or not getattr(stats, "data", None):  # skipped, failed or --benchmark-disable
        return
    params = getattr(request.node, "callspec", None)
    _records[_suite(request.node)].append({
        "name": request.node.name,
        "params": {k: repr(v) if not isinstance(v, (int, float, str, bool)) else v
                   for k, v in (params.params.items() if params else [])},
        "median_s": stats.median, "min_s": stats.min, "mean_s": stats.mean, "stddev_s": stats.stddev,
        "rounds": stats.rounds, "extra_info": dict(bench.extra_info),
    })


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and call.when in ("setup", "call") and "benchmark" in getattr(item, "fixturenames", ()):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        _records[_suite(item)].append({"name": item.name, "skipped": reason})


def _add_ratios(records: list[dict]) -> None:
    groups = defaultdict(dict)
    for r in records:
        info = r.get("extra_info", {})
        if "group" in info and "provider" in info:
            groups[info["group"]][info["provider"]] = r["median_s"]
    for r in records:
        info = r.get("extra_info", {})
        baselines = info.get("baselines")
        if not baselines or "group" not in info:
            continue
        ran = groups[info["group"]]
        if baselines[0] in ran:
            base = baselines[0]
        else:
            others = [b for b in baselines[1:] if b in ran]
            if not others:
                continue
            base = min(others, key=ran.get)
        info["baseline"] = base
        info["speedup"] = round(ran[base] / r["median_s"], 3)


def pytest_sessionfinish(session, exitstatus):
    if not _records:
        return
    machine = _machine()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for suite, records in _records.items():
        _add_ratios(records)
        path = RESULTS_DIR / f"{suite}_{machine['device_kind']}.json"
        path.write_text(json.dumps({"suite": suite, "machine": machine, "results": records}, indent=1))


def pytest_terminal_summary(terminalreporter):
    for suite, records in _records.items():
        rows = [r for r in records if "median_s" in r and "provider" in r["extra_info"]]
        if not rows:
            continue
        terminalreporter.write_sep("-", f"{suite}: median ms, speedup vs baseline in the same run")
        for r in rows:
            info = r["extra_info"]
            extras = "  ".join(f"{k}={v}" for k, v in info.items()
                               if k not in ("group", "provider", "baselines", "baseline", "speedup"))
            speed = f"x{info['speedup']:.2f} vs {info['baseline']}" if "speedup" in info else ""
            terminalreporter.write_line(f"{info['group']:<28} {info['provider']:<10} "
                                        f"{r['median_s'] * 1e3:>10.3f} ms  {speed:<22} {extras}")
        for r in records:
            if "skipped" in r:
                terminalreporter.write_line(f"skipped {r['name']}: {r['skipped']}")
