"""The checkout's root is safe on sys.path: `python -m`, torchrun and pytest put it first, and its
top-level `kernels/` folder meets Hugging Face's `kernels` distribution (which transformers
imports). `kernels/` has no __init__.py and convirt_fast/kernels links to it, so from the root
`import kernels` gives the installed distribution (a regular package wins over a namespace
portion wherever it stands on sys.path) and the loss modules load once, as convirt_fast.kernels.*.
Every check runs in a fresh interpreter started in the checkout's root, as a user's command would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_in_root(code: str, *, extra_path: Path | None = None, timeout: int = 300) -> dict:
    """Runs `code` with `python -c` in the checkout's root (cwd first on sys.path); returns the JSON
    it prints last."""
    env = dict(os.environ)
    if extra_path is not None:  # after the root, as site-packages stands
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_kernels_distribution_behind_the_root_wins(tmp_path):
    """Whatever is installed here: a regular `kernels` package later on sys.path than the root is
    the one imported, and convirt_fast.kernels still loads from the checkout."""
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("CUDAProperties = 'the distribution'\n")
    got = run_in_root("""
        import json, sys, kernels, convirt_fast.kernels.convirt_loss as loss
        print(json.dumps({"kernels": kernels.__file__, "marker": kernels.CUDAProperties, "loss": loss.__file__,
                          "sys_path_0": sys.path[0]}))
    """, extra_path=tmp_path / "site")
    assert got["sys_path_0"] == ""  # python -c: the working directory (the root) comes first
    assert got["kernels"] == str(fake / "__init__.py") and got["marker"] == "the distribution"
    assert Path(got["loss"]).resolve() == REPO / "kernels" / "convirt_loss.py"


def test_transformers_bert_and_the_loss_from_the_root():
    """The installed transformers (which imports Hugging Face's `kernels` where installed) runs a BERT
    forward from the root; convirt_fast's loss modules load once each, their custom ops registered."""
    got = run_in_root("""
        import importlib.metadata, json, os, sys
        import torch
        from transformers import BertConfig, BertModel
        import kernels

        bert = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64)).eval()
        with torch.no_grad():
            hidden = bert(torch.tensor([[2, 5, 7, 3]])).last_hidden_state
        import convirt_fast.kernels.triton_loss, convirt_fast.kernels.convirt_loss
        from convirt_fast import ConVIRTLoss
        loss = ConVIRTLoss()(torch.randn(6, 8), torch.randn(6, 8))
        try:
            installed = importlib.metadata.version("kernels")
        except importlib.metadata.PackageNotFoundError:
            installed = None
        ours = tuple(os.path.join(os.getcwd(), folder, "") for folder in ("convirt_fast", "kernels"))
        files = [os.path.realpath(m.__file__) for m in list(sys.modules.values())
                 if getattr(m, "__file__", None) and os.path.realpath(m.__file__).startswith(ours)]
        print(json.dumps({"hidden": list(hidden.shape), "loss": float(loss), "installed": installed,
                          "kernels_file": kernels.__file__, "files": files,
                          "ops": [hasattr(torch.ops.convirt_fast, op) for op in ("loss_fwd", "loss_bwd")]}))
    """)
    assert got["hidden"] == [1, 4, 32] and got["loss"] > 0
    if got["installed"]:  # the distribution, not the checkout's folder
        assert got["kernels_file"] and Path(got["kernels_file"]).resolve().parent != REPO / "kernels"
    else:  # the checkout's folder as an empty namespace: nothing in it ran
        assert got["kernels_file"] is None
    assert len(got["files"]) == len(set(got["files"])), "a checkout file loaded under two module names"
    assert str(REPO / "kernels" / "triton_loss.py") in got["files"]
    assert got["ops"] == [True, True]


def test_the_constraints_pin_hugging_faces_kernels():
    """The stack CI installs has the distribution that once collided with the checkout's folder, so
    the test above exercises the collision (not only the namespace fallback)."""
    pins = (REPO / "constraints.txt").read_text().splitlines()
    assert any(line.startswith("kernels==") for line in pins)


def test_two_training_steps_from_the_root(tmp_path):
    """`python -m convirt_fast.train` started in the root, as the README's command is."""
    from convirt_fast.prepare.synthetic import ensure_synthcxr

    ensure_synthcxr(tmp_path / "cache", n=40, seed=0, size=64, workers=1, progress=False)
    out = subprocess.run(
        [sys.executable, "-m", "convirt_fast.train", "--model.image_encoder=resnet18", "--model.text_layers=1",
         "--model.text_hidden=32", "--model.text_heads=2", "--model.vocab_size=300", "--model.projection_dim=16",
         "--model.freeze_text_layers=0", "--data.path=synthcxr", "--data.synth_n=40", "--data.synth_size=64",
         f"--data.cache_dir={tmp_path / 'cache'}", "--data.batch_size=4", "--data.num_workers=0",
         "--data.max_length=24", "--data.augment.output_size=32", "--data.backend=torch",
         "--train.max_steps=2", "--train.log_every=1", "--train.val_every=2", "--train.checkpoint_every=2",
         "--train.progress=false", "--train.evaluate=false", f"--train.out_dir={tmp_path / 'runs'}",
         "--train.run_name=root"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    steps = [json.loads(line) for line in (tmp_path / "runs" / "root" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r.get("kind") == "train"] == [1, 2]
