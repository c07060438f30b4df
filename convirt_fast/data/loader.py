"""The training loader: per step, this rank's batch of studies as augmented images on the
device, one sampled sentence per study tokenized, and the study rows.

    loader = ConVIRTLoader(manifest, tokenizer, rows=manifest.split_indices("train"), batch_size=32,
                           device="cuda", rank=r, world_size=R)
    for batch in loader:            # one epoch from the current position
        batch["images"]             # (B, 1, S, S) float32 on the device, normalised
        batch["input_ids"], batch["attention_mask"]   # (B, T) on the device
        batch["rows"]               # (B,) manifest rows of the studies
    loader.set_epoch(0)             # iterate epoch 0 again next (same batches, same workers)
    state = loader.state_dict()     # resume: ConVIRTLoader(...).load_state_dict(state)

`rows` are the manifest rows to draw from (a split's, a label subset, any selection); those
without an image (or, with a tokenizer, without a sentence) are left out. A shuffling loader
(training) permutes them per epoch from (seed, epoch) and treats them as a set: their order does
not change the batches. An evaluation loader (`train=False`) keeps them in the order given.

Work split: DataLoader workers read files (decode them for the torch backend; for DALI, and
for the torch backend with `decode="gpu"`, only read the bytes and the size in the header),
sample sentences, tokenize and draw the augmentation parameters; the main process decodes the
batch's JPEGs on the GPU (`decode="gpu"`: torchvision's batched nvJPEG; other formats were
decoded by the worker) and runs the augmentation on the device (torch backend), or runs the
DALI pipeline. An image that cannot be read is replaced by another study, counted
(`replaced`, by file) and reported, never a crash: the worker sends an `ImageProblem` (row,
study, file, message) with the batch. A batch the GPU decoder rejects is decoded again one JPEG
at a time on the device to find the files it rejects (CMYK, 12-bit, a subsampling nvJPEG lacks,
corrupt data): those are decoded by the workers from then on (`gpu_rejected`, sent with every
batch key) and the batch is read again with them; each fallback is counted by cause
(`decode_fallbacks`, warned once per cause). A batch DALI rejects is redone with CPU decoding.

Shuffling (training) loaders keep their workers busy across epoch boundaries: the DataLoader's
sampler is an endless stream of (epoch, batch) keys, so the next epoch's first batches are
prefetched while this one's last ones train. The iterator survives between `for` loops as long
as the position it would deliver next is the loader's position (after `load_state_dict` or a
`set_epoch` elsewhere, a new one starts there). The worker processes are persistent: one loader
serves every epoch and pass (validation, fine-tuning) without starting new ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from convirt_fast.data.augment import AugmentSpec, eval_matrix, sample_params
from convirt_fast.data.augment_dali import DaliAugmenter, dali_available
from convirt_fast.data.augment_torch import augment_batch, eval_batch, to_unit_float
from convirt_fast.data.image_decode import (ImageError, check_decode, decode_jpegs_on_device, gpu_decode_status,
                                            image_size, pad_batch, pad_batch_on_device, read_encoded, read_image)
from convirt_fast.data.study_sampler import StudySampler, derive_seed

log = logging.getLogger(__name__)

BACKENDS = ("auto", "dali", "torch")
# Unreadable images in a row before a batch gives up (then the data set is mostly broken).
_MAX_REPLACEMENTS = 16
# Failures of the device, not of a file (they are RuntimeErrors too): never retried as a
# decoding problem.
_DEVICE_ERRORS = (torch.OutOfMemoryError, torch.AcceleratorError)


def resolve_backend(backend: str, device: torch.device) -> str:
    """auto: DALI when it is installed and the device is a GPU, else torch."""
    if backend not in BACKENDS:
        raise ValueError(f"data.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "dali" if device.type == "cuda" and dali_available() else "torch"
    if backend == "dali" and not dali_available():
        raise ImportError("data.backend=dali needs NVIDIA DALI: pip install -e '.[dali]'")
    return backend


def resolve_decode(decode: str, backend: str, device: torch.device) -> str:
    """Where the torch backend decodes JPEGs: "cpu" (PIL, in the workers) or "gpu" (nvJPEG in
    the main process). auto: gpu when the backend is torch, the device is CUDA and torchvision
    decodes there, else cpu. An explicit gpu that cannot be honoured raises (no silent
    fallback); with the DALI backend, decoding is DALI's own (nvJPEG on a GPU)."""
    check_decode(decode, backend)
    if decode == "cpu" or (decode == "auto" and (backend != "torch" or device.type != "cuda")):
        return "cpu"
    if decode == "gpu":
        if device.type != "cuda":
            raise ValueError(f"data.decode=gpu needs a CUDA device, the loader runs on {device}; "
                             f"use data.decode=auto (GPU decode where possible) or cpu")
    reason = gpu_decode_status(str(device))
    if reason is None:
        return "gpu"
    if decode == "gpu":
        raise RuntimeError(f"data.decode=gpu: {reason}; use data.decode=cpu")
    log.info("decoding JPEGs on the CPU: %s", reason)
    return "cpu"


@dataclass(frozen=True)
class ImageProblem:
    """An image a worker could not use: its study was replaced by another one."""

    row: int
    """The manifest row of the study."""
    study_id: str
    path: str
    """The file that failed (the study's image chosen for that epoch)."""
    message: str
    """The reader's message (it names the file and the problem)."""


@dataclass
class _BatchPlan:
    """What the workers need, picklable (no open files, no C++ objects)."""

    images: dict[int, list[str]]
    """Image paths of the rows the loader draws from (replacements included)."""
    study_ids: dict[int, str]
    sentence_index: str
    sampler: StudySampler
    spec: AugmentSpec
    train: bool
    read_bytes: bool
    tokenizer: object
    max_length: int
    augment_in_worker: bool = False
    decode_on_device: bool = False
    shuffle: bool = True


class _EpochBatches(Dataset):
    """Item (epoch, b, gpu_rejected): batch b of that epoch, the JPEGs in gpu_rejected decoded
    here even with decode_on_device. One dataset (and, with workers, one set of persistent
    worker processes) serves every epoch."""

    def __init__(self, plan: _BatchPlan):
        self.plan = plan
        self._index = None
        self._share_epoch, self._share = None, []

    def __len__(self) -> int:
        return self.plan.sampler.num_batches()

    def _sentence_index(self):
        if self._index is None:  # memory-mapped once per worker
            from convirt_fast.text import SentenceIndex

            self._index = SentenceIndex.load(self.plan.sentence_index)
        return self._index

    def _path(self, row: int, epoch: int) -> str:
        plan = self.plan
        paths = plan.images[row]
        return paths[plan.sampler.image_choice(epoch, row, len(paths)) if plan.train else 0]

    def _read(self, path: str, gpu_rejected: frozenset[str]):
        plan = self.plan
        if plan.decode_on_device and path not in gpu_rejected:
            return read_encoded(path)
        if plan.read_bytes:
            height, width = image_size(path)
            data = np.fromfile(path, dtype=np.uint8)
            if data.size == 0:
                raise ImageError(f"{path}: empty file")
            return data, height, width
        pixels = read_image(path)
        return pixels, pixels.shape[0], pixels.shape[1]

    def _epoch_share(self, epoch: int) -> list[int]:
        if self._share_epoch != epoch:
            sampler = self.plan.sampler
            self._share = sampler.share(epoch) if self.plan.shuffle else sampler.ordered_share()
            self._share_epoch = epoch
        return self._share

    def __getitem__(self, key: tuple[int, int, frozenset[str]]) -> dict:
        plan = self.plan
        epoch, b, gpu_rejected = key
        rows, items, paths, problems = [], [], [], []
        for row in plan.sampler.batch(epoch, b, self._epoch_share(epoch)):
            for attempt in range(_MAX_REPLACEMENTS + 1):
                path = self._path(row, epoch)
                try:
                    items.append(self._read(path, gpu_rejected))
                    rows.append(row)
                    paths.append(path)
                    break
                except ImageError as error:
                    problems.append(ImageProblem(row, plan.study_ids[row], path, str(error)))
                    row = plan.sampler.replacement(epoch, row, attempt)
            else:
                raise RuntimeError(f"{_MAX_REPLACEMENTS + 1} unreadable images in a row; last: {problems[-1].message}")
        heights = torch.tensor([h for _, h, _ in items])
        widths = torch.tensor([w for _, _, w in items])
        out: dict = {"key": (epoch, b), "rows": torch.tensor(rows), "problems": problems}
        if plan.train:
            generator = torch.Generator().manual_seed(derive_seed(plan.sampler.seed, epoch, plan.sampler.rank, b))
            out["params"] = sample_params(heights, widths, plan.spec, generator)
        else:
            out["matrix"] = eval_matrix(heights, widths, plan.spec.output_size)
        if plan.read_bytes:
            out["encoded"] = [data for data, _, _ in items]
        elif plan.decode_on_device:
            # One tensor for all the JPEG bytes: a tensor from a worker costs a shared-memory file
            # descriptor while it lives, and 256 per batch times the prefetched batches would
            # exhaust the limit. Images decoded here (PNG, 16-bit) travel as arrays.
            jpegs = [i for i, (data, _, _) in enumerate(items) if data.ndim == 1]
            out["jpeg_bytes"] = torch.from_numpy(np.concatenate([items[i][0] for i in jpegs]) if jpegs
                                                 else np.zeros(0, np.uint8))
            out["jpeg_lengths"] = [int(items[i][0].size) for i in jpegs]
            out["jpeg_index"] = jpegs
            out["jpeg_paths"] = [paths[i] for i in jpegs]
            out["decoded"] = {i: data for i, (data, _, _) in enumerate(items) if data.ndim == 2}
            out["sizes"] = [(h, w) for _, h, w in items]
        else:
            out["pixels"], _, _, out["max_value"] = pad_batch([data for data, _, _ in items])
            if plan.augment_in_worker:
                out["images"] = _augment_torch(out.pop("pixels"), out.pop("max_value"), out, plan)
        if plan.tokenizer is not None:
            sentences = self._sentence_index().sample(rows, seed=plan.sampler.seed, epoch=epoch)
            tokens = plan.tokenizer(sentences, padding="longest", truncation=True, max_length=plan.max_length,
                                    return_tensors="pt")
            out["input_ids"], out["attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
            out["sentences"] = sentences
        return out


def _augment_torch(pixels: torch.Tensor, max_value: float, raw: dict, plan: _BatchPlan) -> torch.Tensor:
    images = to_unit_float(pixels, max_value)
    if plan.train:
        return augment_batch(images, raw["params"], plan.spec)
    return eval_batch(images, raw["matrix"], plan.spec)


def _no_collate(batch):
    return batch


class _KeyStream:
    """The DataLoader's sampler: (epoch, batch, gpu_rejected) keys from `start` on; with
    `endless`, epoch after epoch (workers prefetch across epoch boundaries), else to the end of
    that epoch. It runs in the main process as batches are requested, so each key carries the
    loader's gpu_rejected of that moment to the worker that reads the batch (keys already
    handed out carry an older one)."""

    def __init__(self, batches_per_epoch: int, endless: bool):
        self.batches_per_epoch, self.endless = batches_per_epoch, endless
        self.start = (0, 0)
        self.gpu_rejected: frozenset[str] = frozenset()

    def __iter__(self):
        epoch, b = self.start
        while self.batches_per_epoch > 0:
            if b == self.batches_per_epoch:
                if not self.endless:
                    return
                epoch, b = epoch + 1, 0
            yield epoch, b, self.gpu_rejected
            b += 1


class ConVIRTLoader:
    """Batches of (augmented image, sampled sentence) pairs for one rank; see the module doc.

    rows: the manifest rows to draw from, each once (e.g. `manifest.split_indices("train")`).
    train: random augmentation and image choice (a multi-image study shows one of its images);
    else the evaluation transform and the study's first image. shuffle (default: train): a new
    permutation of the rows every epoch, from (seed, epoch), and epochs stream into one another;
    else the rows in the order given, every epoch. drop_last (default: train): drop a final
    partial batch. With `tokenizer=None` it loads images only (no "input_ids",
    "attention_mask", "sentences"), e.g. for evaluation sets whose studies have no report.
    """

    def __init__(self, manifest, tokenizer, *, rows: Iterable[int], batch_size: int = 32,
                 augment: AugmentSpec | None = None, train: bool = True, shuffle: bool | None = None,
                 backend: str = "auto", device: str | torch.device = "cpu", num_workers: int = 2, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool | None = None, max_length: int = 64,
                 decode: str = "auto"):
        from convirt_fast.text import SentenceIndex

        self.device = torch.device(device)
        self.backend = resolve_backend(backend, self.device)
        decode = resolve_decode(decode, self.backend, self.device)
        self.decode = decode if self.backend == "torch" else "dali"  # DALI decodes by itself
        self.spec = augment or AugmentSpec()
        self.train = train
        self.shuffle = train if shuffle is None else shuffle
        self.num_workers = num_workers
        given = _check_rows(manifest, rows)
        index_path = Path(manifest.sentence_index_path)
        empty: set[int] = set()
        if tokenizer is not None:  # pairs: studies need a sentence
            index = SentenceIndex.load(index_path)
            if len(index) != len(manifest):
                raise ValueError(f"{index_path}: {len(index)} reports for {len(manifest)} manifest rows (stale index?)")
            empty = set(index.empty_report_ids())
        usable = [i for i in given if i not in empty and manifest.studies[i].images]
        if not usable:
            needs = "an image and a sentence" if tokenizer is not None else "an image"
            raise ValueError(f"{manifest.root}: none of the {len(given)} rows to draw from "
                             f"({_preview(given)}) has {needs}")
        self.excluded_without_text = len(given) - len(usable)
        if self.shuffle:  # a set: the caller's order does not change the permutations
            usable.sort()
        sampler = StudySampler(usable, batch_size, seed=seed, rank=rank, world_size=world_size,
                               drop_last=train if drop_last is None else drop_last)
        images = {i: [str(p) for p in manifest.image_paths(i)] for i in usable}
        study_ids = {i: manifest.studies[i].study_id for i in usable}
        # On a CPU the workers run the batched augmentation too, overlapping it with the step;
        # on a GPU it runs on the device, in the main process.
        augment_in_worker = self.backend == "torch" and self.device.type == "cpu" and num_workers > 0
        self._plan = _BatchPlan(images, study_ids, str(index_path), sampler, self.spec, train,
                                read_bytes=self.backend == "dali", tokenizer=tokenizer, max_length=max_length,
                                augment_in_worker=augment_in_worker, decode_on_device=self.decode == "gpu",
                                shuffle=self.shuffle)
        self.sampler = sampler
        self.epoch = 0
        self.position = 0  # next batch index within the epoch
        self.replaced: Counter = Counter()  # unreadable file -> times replaced
        self.decode_fallbacks: Counter = Counter()  # cause -> batches the device decoder (GPU or DALI) failed
        self._dali = None
        self._dali_rebuilt = False
        self._keys = _KeyStream(sampler.num_batches(), endless=self.shuffle)  # the DataLoader's sampler
        self._main_reader: _EpochBatches | None = None  # reads a batch again in this process
        self._loader = None
        self._live = None  # the DataLoader iterator, kept across epochs and `for` loops
        self._live_next: tuple[int, int] | None = None  # the key it delivers next

    # -- iteration -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.sampler.num_batches()

    @property
    def rows(self) -> list[int]:
        """The rows drawn from (those with an image and a sentence), in the loader's order."""
        return list(self.sampler.rows)

    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch `epoch` next, from its first batch: its permutation (shuffle), image
        choice, augmentation and sentence draw, the same batches each time. The workers stay;
        a stream that already prefetches that epoch (a shuffling loader whose previous epoch
        ended) goes on, else a new one starts there."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
        self.epoch, self.position = int(epoch), 0

    @property
    def gpu_rejected(self) -> frozenset[str]:
        """JPEGs the GPU decoder failed on: decoded by the workers (PIL) from then on."""
        return self._keys.gpu_rejected

    def __iter__(self):
        """The rest of the current epoch; at its end the loader moves to the next epoch."""
        while self.position < len(self):
            live = self._iterator()
            self._live_next = None  # unknown until this batch arrives (a worker error leaves it so)
            raw = next(live)
            if raw["key"] != (self.epoch, self.position):  # cannot happen: the stream starts here
                raise RuntimeError(f"loader out of step: got batch {raw['key']}, "
                                   f"expected {(self.epoch, self.position)}")
            batch = self._finish(raw)
            self.position += 1
            self._live_next = (self.epoch, self.position)
            if self.position == len(self):
                self._live_next = (self.epoch + 1, 0) if self._keys.endless else None
            yield batch
        self.epoch += 1
        self.position = 0

    def _iterator(self):
        """The live DataLoader iterator if it delivers (epoch, position) next, else a new one
        starting there."""
        if self._live is None or self._live_next != (self.epoch, self.position):
            if self._loader is None:
                # Persistent workers: iterators after the first start without spawning processes.
                # (Its own generator: creating an iterator draws a worker seed, which must not
                # advance the global RNG; that would change dropout masks after a resume.)
                self._loader = DataLoader(_EpochBatches(self._plan), batch_size=None, sampler=self._keys,
                                          num_workers=self.num_workers, collate_fn=_no_collate,
                                          pin_memory=self.device.type == "cuda",
                                          persistent_workers=self.num_workers > 0,
                                          generator=torch.Generator().manual_seed(self.sampler.seed))
            self._keys.start = (self.epoch, self.position)
            self._live = iter(self._loader)  # a persistent iterator drops what it had prefetched
            self._live_next = (self.epoch, self.position)
        return self._live

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the loader is garbage-collected);
        iterating again starts new ones."""
        shutdown = getattr(self._live, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._live, self._live_next, self._loader = None, None, None

    def _finish(self, raw: dict) -> dict:
        problems = raw.pop("problems")
        if "encoded" in raw:  # DALI
            try:
                images = self._run_dali(raw)
            except _DEVICE_ERRORS:
                raise
            except RuntimeError as error:
                # A file that passed the header checks but does not decode (a corrupt JPEG):
                # redo this batch with CPU decoding, whose full decode finds and replaces it.
                self._count_fallback(f"DALI: {_first_line(error)}", raw["key"], "redoing it with CPU decoding")
                if not self._dali_rebuilt:  # once, in case the error left the pipeline unusable; a
                    self._dali, self._dali_rebuilt = None, True  # corrupt file does not, so no more
                plan = dataclasses.replace(self._plan, read_bytes=False)
                return self._finish(_EpochBatches(plan)[(*raw["key"], frozenset())])
        elif "jpeg_bytes" in raw:  # JPEG bytes for the GPU decoder
            images = self._decode_and_augment(raw)
            if images is None:  # files newly in gpu_rejected: read the batch again (its problems with it)
                return self._finish(self._read_again(raw["key"]))
        elif "images" in raw:  # augmented in the worker (CPU training)
            images = raw["images"]
        else:
            pixels = raw.pop("pixels").to(self.device, non_blocking=True)
            images = _augment_torch(pixels, raw.pop("max_value"), raw, self._plan)
        for problem in problems:
            if self.replaced[problem.path] == 0:
                log.warning("skipping unreadable image of study %s (row %d, replaced by another study): %s",
                            problem.study_id, problem.row, problem.message)
            self.replaced[problem.path] += 1
        batch = {"images": images, "rows": raw["rows"]}
        if "input_ids" in raw:
            batch["input_ids"] = raw["input_ids"].to(self.device, non_blocking=True)
            batch["attention_mask"] = raw["attention_mask"].to(self.device, non_blocking=True)
            batch["sentences"] = raw["sentences"]
        return batch

    def _decode_and_augment(self, raw: dict) -> torch.Tensor | None:
        """decode="gpu": the batch's JPEGs in one nvJPEG call, then the torch augmentation. None
        when the batch must be read again: a JPEG in it is in gpu_rejected (newly found, or
        rejected after a worker read it)."""
        sizes = raw.pop("sizes")
        pixels: list = [None] * len(sizes)
        for i, array in raw.pop("decoded").items():  # decoded by the worker
            pixels[i] = torch.from_numpy(array.astype(np.int32) if array.dtype == np.uint16
                                         else np.require(array, requirements=["C", "W"]))
        jpegs, lengths, data = raw.pop("jpeg_index"), raw.pop("jpeg_lengths"), raw.pop("jpeg_bytes")
        paths = raw.pop("jpeg_paths")
        if jpegs:
            if not self.gpu_rejected.isdisjoint(paths):  # read (prefetched) before they were rejected
                return None
            encoded = list(torch.split(data, lengths))  # views of the (pinned) buffer
            decoded = self._decode_jpegs(encoded, paths, [sizes[i] for i in jpegs], raw["key"])
            if decoded is None:
                return None
            for i, image in zip(jpegs, decoded):
                pixels[i] = image
        canvas, max_value = pad_batch_on_device(pixels, self.device)
        return _augment_torch(canvas, max_value, raw, self._plan)

    def _decode_jpegs(self, encoded: list[torch.Tensor], paths: list[str], sizes: list[tuple[int, int]],
                      key: tuple[int, int]) -> list[torch.Tensor] | None:
        """The JPEGs decoded on the device in one call, each of its header's size (the
        augmentation parameters were drawn for it). When the call fails, the JPEGs are decoded
        one at a time to find those at fault: they join gpu_rejected and None is returned;
        when none is at fault, the single decodes are the result. Out-of-memory and CUDA
        errors propagate: they say nothing about the files."""
        try:
            images = decode_jpegs_on_device(encoded, self.device)
            cause = None if [tuple(i.shape) for i in images] == sizes else "decoded size differs from the header"
        except _DEVICE_ERRORS:
            raise
        except RuntimeError as error:
            cause = _first_line(error)
        if cause is None:
            return images
        images, rejected = [], []
        for data, path, size in zip(encoded, paths, sizes):
            try:
                (image,) = decode_jpegs_on_device([data], self.device)
                if tuple(image.shape) == size:
                    images.append(image)
                    continue
            except _DEVICE_ERRORS:
                raise
            except RuntimeError:
                pass
            rejected.append(path)
        if not rejected:
            self._count_fallback(f"GPU decode: {cause}", key, "no file at fault, the JPEGs decoded one at a time")
            return images
        self._count_fallback(f"GPU decode: {cause}", key, f"decoding {len(rejected)} file(s) in the workers "
                             f"from now on (loader.gpu_rejected), e.g. {rejected[0]}")
        log.info("JPEGs the GPU decoder rejects, decoded by the workers from now on: %s", rejected)
        self._keys.gpu_rejected = self.gpu_rejected | frozenset(rejected)
        return None

    def _count_fallback(self, cause: str, key: tuple[int, int], action: str) -> None:
        if self.decode_fallbacks[cause] == 0:
            log.warning("%s on batch %s (epoch, index): %s (warned once per cause; loader.decode_fallbacks "
                        "counts them)", cause, key, action)
        self.decode_fallbacks[cause] += 1

    def _read_again(self, key: tuple[int, int]) -> dict:
        """Batch `key` read in this process, with the current gpu_rejected."""
        if self._main_reader is None:
            self._main_reader = _EpochBatches(self._plan)
        return self._main_reader[(*key, self.gpu_rejected)]

    def _run_dali(self, raw: dict) -> torch.Tensor:
        if self._dali is None:
            device_id = (self.device.index or 0) if self.device.type == "cuda" else None
            self._dali = DaliAugmenter(self.spec, self.sampler.batch_size, device_id=device_id,
                                       num_threads=max(1, self.num_workers))
        encoded = raw.pop("encoded")
        if self.train:
            p = raw["params"]
            return self._dali(encoded, p.matrix, p.brightness, p.contrast, p.blur_sigma)
        return self._dali.evaluate(encoded, raw["matrix"])

    # -- resume --------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The position and counters; "rows_sha256" fingerprints the rows drawn from (in the
        loader's order), so that a resume with other rows is refused."""
        s = self.sampler
        return {"epoch": self.epoch, "position": self.position, "seed": s.seed, "rank": s.rank,
                "world_size": s.world_size, "num_rows": len(s.rows), "rows_sha256": _fingerprint(s.rows),
                "batch_size": s.batch_size, "replaced": dict(self.replaced),
                "decode_fallbacks": dict(self.decode_fallbacks), "gpu_rejected": sorted(self.gpu_rejected)}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` left off. Refused (ValueError) when it comes from another
        seed, world size, batch size or other rows. (A state without "rows_sha256", from before
        the fingerprint, is checked on the number of rows only.)"""
        s = self.sampler
        expected = {"seed": s.seed, "world_size": s.world_size, "num_rows": len(s.rows), "batch_size": s.batch_size}
        if "rows_sha256" in state:
            expected["rows_sha256"] = _fingerprint(s.rows)
        different = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if different:
            hint = ("; the rows drawn from differ (another manifest, split or selection, or rows with an image "
                    "or a sentence added or removed), so the saved position means other studies"
                    if {"num_rows", "rows_sha256"} & set(different) else "")
            raise ValueError(f"loader state from another setup (saved, now): {different}{hint}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.replaced = Counter(state.get("replaced", {}))
        self.decode_fallbacks = Counter(state.get("decode_fallbacks", {}))
        self._keys.gpu_rejected = frozenset(state.get("gpu_rejected", ()))


def _check_rows(manifest, rows: Iterable[int]) -> list[int]:
    """`rows` as a list of ints, each a row of `manifest` and given once."""
    if isinstance(rows, (str, bytes)):
        raise TypeError(f"rows must be manifest row indices, got {rows!r} (a split? pass "
                        f"manifest.split_indices({rows!r}))")
    given = [int(r) for r in rows]
    if not given:
        raise ValueError(f"{manifest.root}: no rows to draw from (rows= is empty: an empty split or selection?)")
    outside = [r for r in given if not 0 <= r < len(manifest)]
    if outside:
        raise ValueError(f"{manifest.root}: rows outside the manifest's {len(manifest)} rows: {_preview(outside)}")
    if len(set(given)) != len(given):
        repeated = sorted(r for r, n in Counter(given).items() if n > 1)
        raise ValueError(f"{manifest.root}: rows given more than once: {_preview(repeated)} (pass each row once)")
    return given


def _preview(rows: list[int], n: int = 8) -> str:
    shown = ", ".join(map(str, rows[:n]))
    return f"rows {shown}" + (f", ... ({len(rows)} in all)" if len(rows) > n else "")


def _fingerprint(rows: list[int]) -> str:
    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else repr(error)
