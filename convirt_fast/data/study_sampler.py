"""Which studies each rank sees in which batch: epoch reshuffle by seed, disjoint rank shares.

Every choice is a pure function of (seed, epoch, ...), so a run resumed from
`state_dict()` continues at the same sample, and the image chosen for a multi-image study, the
replacement of an unreadable study and the augmentation draws do not depend on the number of
data-loader workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convirt_fast.text.ops import sample_choice, splitmix64

_MASK63 = (1 << 63) - 1


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 chain), for torch.Generator.manual_seed."""
    key = 0
    for part in parts:
        key = splitmix64(key ^ (part & ((1 << 64) - 1)))
    return key & _MASK63


@dataclass
class StudySampler:
    """Batches of study rows for one rank.

    Each epoch is a permutation of `rows` drawn from (seed, epoch). Rank r of R takes every R-th
    study of it, the shares cut to equal length (the at most R-1 studies left over differ from
    epoch to epoch), so shares are disjoint and every rank runs the same number of steps, as
    collective operations require. With `drop_last` a final partial batch is dropped (a
    contrastive batch of a few pairs is a weak signal); without it, it is kept.
    """

    rows: list[int]
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    drop_last: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if len(self.rows) < self.world_size:
            raise ValueError(f"{len(self.rows)} studies cannot be shared by {self.world_size} ranks")

    def share(self, epoch: int) -> list[int]:
        """This rank's study rows for `epoch`, in order."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        order = torch.randperm(len(self.rows), generator=generator).tolist()
        per_rank = len(self.rows) // self.world_size
        return [self.rows[i] for i in order[self.rank :: self.world_size][:per_rank]]

    def ordered_share(self) -> list[int]:
        """Evaluation order: `rows` as given, split across ranks like the training shares."""
        per_rank = len(self.rows) // self.world_size
        return self.rows[self.rank :: self.world_size][:per_rank]

    def num_batches(self) -> int:
        per_rank = len(self.rows) // self.world_size
        full, rest = divmod(per_rank, self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def batch(self, epoch: int, index: int, share: list[int] | None = None) -> list[int]:
        share = self.share(epoch) if share is None else share
        return share[index * self.batch_size : (index + 1) * self.batch_size]

    def image_choice(self, epoch: int, row: int, num_images: int) -> int:
        """Which of a study's images it shows this epoch (one image per study, uniform)."""
        return sample_choice(self.seed, epoch, row, 1, num_images)

    def replacement(self, epoch: int, row: int, attempt: int) -> int:
        """A stand-in for a study whose image cannot be read (drawn from all rows)."""
        return self.rows[sample_choice(self.seed, epoch, row, 2 + attempt, len(self.rows))]
