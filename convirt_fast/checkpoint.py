"""Checkpoints of a run: a `Checkpointer` over the objects that make up its state, as in
torchtitan. Each object has `state_dict()` / `load_state_dict()`; the checkpoint is one file
(rank 0 writes it atomically, `convirt_fast.io`) holding every object's state under its name,
plus the step and the run's config. The model and optimizer go through
torch.distributed.checkpoint's full state dicts, so a checkpoint of an FSDP2 run resumes under
DDP and vice versa; the RNG state is gathered from every rank.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from convirt_fast.distributed import all_gather_objects, barrier
from convirt_fast.io import CHECKPOINT_FORMAT, CheckpointError, atomic_torch_save, load_checkpoint

LAST = "last.pt"
BEST = "best.pt"


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


def _full():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


class ModelState:
    """The (possibly DDP- or FSDP-wrapped) model's full, unsharded state dict."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model, options=_full())  # collective under FSDP

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))


class OptimizerState:
    """The optimizer's full state dict, keyed by parameter names (so it fits any wrapping)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer, options=_full())

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state, options=StateDictOptions(full_state_dict=True))


class RNGState:
    """torch (CPU and CUDA) and Python RNG states of every rank; each rank restores its own."""

    def __init__(self, rank: int):
        self.rank = rank

    def state_dict(self) -> list[dict]:
        state = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return all_gather_objects(state)

    def load_state_dict(self, states: list[dict]) -> None:
        state = states[self.rank]
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


@dataclass
class TrainProgress:
    """The loop's counters. The best validation loss is the schedule's (`LRSchedule.best`)."""

    step: int = 0
    validations: int = 0
    skipped_nonfinite: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "validations": self.validations, "skipped_nonfinite": self.skipped_nonfinite}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.validations = int(state["step"]), int(state["validations"])
        self.skipped_nonfinite = int(state["skipped_nonfinite"])


class Checkpointer:
    """last.pt (every save) and best.pt (on a new best validation loss) under `folder`, holding
    the state of each named object. `save` and `load` are collective: every rank calls them."""

    def __init__(self, folder: str | Path, *, is_main: bool = True, **objects: Stateful):
        self.folder = Path(folder)
        self.is_main = is_main
        self.objects = objects

    @property
    def last(self) -> Path:
        return self.folder / LAST

    @property
    def best(self) -> Path:
        return self.folder / BEST

    def save(self, step: int, config: dict, *, best: bool = False) -> None:
        state = {name: obj.state_dict() for name, obj in self.objects.items()}  # collectives on every rank
        if self.is_main:
            state = {"format": CHECKPOINT_FORMAT, "step": step, "config": config, **state}
            atomic_torch_save(state, self.last)
            if best:
                atomic_torch_save(state, self.best)
        barrier()

    def resume(self, resume: str | None, model_config: dict, model_state: dict, *, world_size: int) -> bool:
        """train.resume: "auto" (last.pt when there is one), a checkpoint path, or None. Refuses a
        checkpoint of another architecture or another number of ranks. True when resumed."""
        path = self.last if resume == "auto" else Path(resume) if resume else None
        if path is None or (resume == "auto" and not path.exists()):
            return False
        state = load_checkpoint(path)
        check_compatible(path, state["config"]["model"], model_config, saved_state=state["model"],
                         current_state=model_state)
        if state["loader"].get("world_size") != world_size:
            raise CheckpointError(f"{path}: saved with {state['loader'].get('world_size')} ranks, resuming with "
                                  f"{world_size}: exact resume needs the same number of ranks")
        self.load(path, state)
        if self.is_main:
            print(f"resumed from {path} at step {state['step']}")
        return True

    def load(self, path: Path, state: dict | None = None) -> dict:
        """Restore every object from the checkpoint at `path` (read it unless `state` is given)."""
        state = load_checkpoint(path) if state is None else state
        if "progress" not in state:  # written before TrainProgress existed: the counters were top-level
            state = {**state, "progress": {k: state[k] for k in ("step", "validations", "skipped_nonfinite")}}
        missing = [name for name in self.objects if name not in state]
        if missing:
            raise CheckpointError(f"{path}: checkpoint lacks {missing}")
        for name, obj in self.objects.items():
            try:
                obj.load_state_dict(state[name])
            except (RuntimeError, KeyError, ValueError) as error:
                raise CheckpointError(f"{path}: its {name} state does not fit this run: {error}") from None
        return state


_ABSENT = object()


def check_compatible(path: Path, saved: dict, current: dict, *, section: str = "model",
                     saved_state: dict | None = None, current_state: dict | None = None) -> None:
    """Refuse to resume a model of another architecture, naming every key that differs: the
    config fields of `section` (saved vs now), and with both state dicts the weights missing,
    unexpected or of another shape."""
    problems = []
    for key, now in current.items():  # a field the checkpoint has and this version lacks is ignored
        was = saved.get(key, _ABSENT)
        if was != now:
            problems.append(f"{section}.{key}: saved {'(absent)' if was is _ABSENT else repr(was)}, now {now!r}")
    if saved_state is not None and current_state is not None:
        problems += state_dict_differences(saved_state, current_state)
    if problems:
        raise CheckpointError(f"{path}: a checkpoint of another architecture: {'; '.join(problems)}. Resume with "
                              f"the saved values (--{section}.<field>=...), or start a new run (--train.resume=none, "
                              f"or another --train.run_name)")


def state_dict_differences(saved: dict, current: dict, show: int = 8) -> list[str]:
    """What keeps `saved` weights from loading into a model whose state dict is `current`: keys
    missing from the checkpoint, keys the model lacks, shapes that differ (the first `show` of each)."""
    def listed(what, keys):
        keys = sorted(keys)
        more = f" and {len(keys) - show} more" if len(keys) > show else ""
        return [f"{what}: {', '.join(keys[:show])}{more}"] if keys else []

    def shape(t) -> tuple:
        return tuple(getattr(t, "shape", ()))

    reshaped = [f"{k} saved {shape(saved[k])} now {shape(current[k])}" for k in sorted(set(saved) & set(current))
                if shape(saved[k]) != shape(current[k])]
    return (listed("weights missing from the checkpoint", set(current) - set(saved))
            + listed("weights this model lacks", set(saved) - set(current))
            + listed("weights of another shape", reshaped))
