"""The package's layers import only downward, and no two modules import each other (directly or
round a longer loop). Every import counts, the ones inside functions too: a lazy import is
still a dependency.

    base      io, require, distributed, _C     files, config checks, process groups, C++ ops
    text      text/                            report sections, sentences, tokenizers
    data      data/                            manifest, decode, augment, loader, SynthCXR rendering
    prepare   prepare/ (not its __main__)      prepared folders: writers, SynthCXR, tokenizer
    models    models/                          encoders, projections, ConVIRTModel, export, load_pretrained
    loss      loss.py, kernels/                the fused loss and its backends
    eval      eval/                            the paper's evaluation protocols
    training  trainer and its parts            loop, checkpoints, config, presets, post-train
    cli       the entry points                 train, evaluate (and eval/main.py), sweep, prepare's __main__, the package root
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "convirt_fast"

LAYERS = ["base", "text", "data", "prepare", "models", "loss", "eval", "training", "cli"]
PREFIXES = {  # longest prefix wins
    "convirt_fast._C": "base", "convirt_fast.io": "base", "convirt_fast.require": "base",
    "convirt_fast.distributed": "base",
    "convirt_fast.text": "text",
    "convirt_fast.data": "data",
    "convirt_fast.prepare": "prepare", "convirt_fast.prepare.__main__": "cli",
    "convirt_fast.models": "models",
    "convirt_fast.loss": "loss", "convirt_fast.kernels": "loss",
    "convirt_fast.eval": "eval", "convirt_fast.eval.main": "cli",  # eval.main: the evaluate command's body
    "convirt_fast.trainer": "training", "convirt_fast.checkpoint": "training", "convirt_fast.config": "training",
    "convirt_fast.presets": "training", "convirt_fast.parallel": "training", "convirt_fast.schedule": "training",
    "convirt_fast.step_window": "training", "convirt_fast.throughput": "training", "convirt_fast.run_log": "training",
    "convirt_fast.post_train": "training", "convirt_fast.run_folder": "training",
    "convirt_fast.cli": "cli", "convirt_fast.train": "cli", "convirt_fast.evaluate": "cli",
    "convirt_fast.sweep": "cli", "convirt_fast.sweep_report": "cli",
}
ROOT = "convirt_fast"  # the package root (the public names): cli, and only itself


def layer_of(module: str) -> str | None:
    """The module's layer; None for a module no layer claims (a new file must be placed here)."""
    if module == ROOT:
        return "cli"
    matches = [p for p in PREFIXES if module == p or module.startswith(p + ".")]
    return PREFIXES[max(matches, key=len)] if matches else None


def modules() -> dict[str, Path]:
    found = {}
    # os.walk follows convirt_fast/kernels, the link to the top-level kernels/ (Path.rglob would not)
    for folder, _, files in os.walk(PACKAGE, followlinks=True):
        for name in files:
            if not name.endswith(".py"):
                continue
            parts = (Path(folder) / name).relative_to(PACKAGE).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(("convirt_fast", *parts))] = Path(folder) / name
    for so in PACKAGE.glob("_C*.so"):
        found["convirt_fast._C"] = so
    found.setdefault("convirt_fast._C", REPO / "csrc")
    return found


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports (`from X import y` means X.y when that is a module)."""
    if path.suffix != ".py":
        return set()
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("convirt_fast")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("convirt_fast"):
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & known
            out |= subs or {target}
            if subs and len(subs) < len(node.names):
                out.add(target)
    return {m for m in out if m in known and m != module}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {m: imports_of(m, p, set(found)) for m, p in found.items()}


def test_every_module_has_a_layer(graph):
    assert len(graph) > 80 and "convirt_fast.kernels.triton_loss" in graph  # the link is followed
    unplaced = sorted(m for m in graph if layer_of(m) is None)
    assert not unplaced, f"modules no layer claims (add them to PREFIXES): {unplaced}"
    assert layer_of("convirt_fast.new_module") is None  # a new top-level file is not silently a CLI


def test_imports_only_go_down(graph):
    upward = [f"{m} ({layer_of(m)}) imports {t} ({layer_of(t)})" for m, targets in sorted(graph.items())
              for t in sorted(targets) if LAYERS.index(layer_of(t)) > LAYERS.index(layer_of(m))]
    assert not upward, "imports that go up a layer:\n  " + "\n  ".join(upward)


def test_no_import_cycles(graph):
    # A package's __init__ re-exporting its submodules is not a cycle with them: edges into a
    # package from its own submodules are left out (importing a.b runs a/__init__ first anyway).
    def edges(m):
        return {t for t in graph[m] if not m.startswith(t + ".")}

    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges(m)):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_production_code_never_imports_a_reference(graph):
    references = {m for m in graph if m.rsplit(".", 1)[-1] in ("reference", "reference_loss")}
    users = [f"{m} imports {t}" for m, ts in graph.items() for t in ts & references
             if not m.endswith(".reference")]
    assert not users, users


def test_the_checker_sees_a_violation(tmp_path):
    """The rule can fail: an upward import in a module is reported."""
    path = tmp_path / "fake.py"
    path.write_text("def f():\n    from convirt_fast.trainer import Trainer\n")
    found = imports_of("convirt_fast.data.fake", path, {"convirt_fast.trainer", "convirt_fast.data.fake"})
    assert found == {"convirt_fast.trainer"}
    assert LAYERS.index(layer_of("convirt_fast.trainer")) > LAYERS.index(layer_of("convirt_fast.data.fake"))
