"""Split assignment for data without an official split: whole groups (a patient, together with
every row that shares an image file with it) go to one split, chosen by a seeded hash of the
group, so a group's split does not move when other rows are added or rejected."""

from __future__ import annotations

import hashlib
from typing import Hashable, Sequence

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validate": "validate",
    "validation": "validate",
    "val": "validate",
    "valid": "validate",
    "dev": "validate",
    "test": "test",
    "testing": "test",
}


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def group_rows(keys: Sequence[Sequence[Hashable]]) -> list[int]:
    """Row i's group: rows sharing any key (patient id, image file) end up in one group,
    named by its first row."""
    uf = _UnionFind(len(keys))
    first: dict[Hashable, int] = {}
    for i, ks in enumerate(keys):
        for k in ks:
            if k in first:
                uf.union(first[k], i)
            else:
                first[k] = i
    return [uf.find(i) for i in range(len(keys))]


def hash_split(group_key: str, seed: int, validate: float, test: float) -> str:
    h = hashlib.sha256(f"{seed}:{group_key}".encode()).digest()
    u = int.from_bytes(h[:8], "little") / 2**64
    if u < test:
        return "test"
    if u < test + validate:
        return "validate"
    return "train"
