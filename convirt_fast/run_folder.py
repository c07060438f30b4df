"""A run's folder: out_dir/run_name, named by default so that every restart finds it again, with
the config and the tokenizer the run trains with."""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from pathlib import Path

from convirt_fast.distributed import barrier, broadcast_object
from convirt_fast.io import atomic_folder, atomic_write_json
from convirt_fast.prepare.tokenizer import ensure_tokenizer
from convirt_fast.text.tokenizer import load_tokenizer


def run_dir(cfg, is_main: bool) -> Path:
    """Create the run folder (rank 0) and write config.json; every rank gets the same path."""
    name = cfg.train.run_name or broadcast_object(default_run_name(cfg.preset))
    folder = Path(cfg.train.out_dir) / name
    if is_main:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "config.json", cfg.to_dict())
    barrier()
    return folder


def run_tokenizer(folder: Path, model_cfg, manifest, is_main: bool):
    """The tokenizer a run trains with. The run folder keeps its own copy (a resumed run goes on
    with it); a new run takes the prepared folder's (built there once if missing), or the
    pretrained text encoder's."""
    own = folder / "tokenizer"
    source = own if own.is_dir() else model_cfg.text_encoder or ensure_tokenizer(manifest, model_cfg.vocab_size)
    barrier()  # every rank has chosen its source before rank 0 writes the run's copy
    tokenizer = load_tokenizer(source)
    if is_main and source != own:
        with atomic_folder(own) as tmp:  # a run killed mid-save must not resume with half a tokenizer
            tokenizer.save_pretrained(str(tmp))
    return tokenizer


def default_run_name(preset: str) -> str:
    """<preset>-<date>-<time>, the same in every restart attempt of one torchrun launch
    (`--max-restarts`), so that train.resume=auto finds the last attempt's checkpoint: under
    torchrun the time is when the torchrun process (this one's parent) started. A rendezvous id
    the user chose (`--rdzv_id`, the same on every node) names the run instead, <preset>-<id>, so a
    relaunch with that id continues it; torchrun's own ids (a fresh uuid per launch, or "none")
    do not."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id is None:  # not under torchrun
        return f"{preset}-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        uuid.UUID(run_id)
        chosen = False  # drawn by torchrun (--standalone, or no --rdzv_id on one node)
    except ValueError:
        chosen = run_id != "none"
    if chosen:
        return f"{preset}-{run_id}"
    try:  # /proc/<pid>/stat field 22: start time in clock ticks after boot (/proc/stat btime)
        ticks = int(Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
        started = datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        started = datetime.now()
    return f"{preset}-{started:%Y%m%d-%H%M%S}"
