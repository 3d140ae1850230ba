"""Per-class sampling order and train/val/test split sizes: pure functions, no I/O."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal, TypeVar

from .manifest import SPLITS, Split

Sampling = Literal["first", "random"]
SAMPLINGS: tuple[Sampling, ...] = ("first", "random")

T = TypeVar("T")


def sampling_order(items: Sequence[T], sampling: Sampling, seed: int, class_key: str) -> list[T]:
    """The order in which a class's candidates are tried.

    `first` keeps the sorted-by-path order (what the original notebook ran); `random` shuffles with
    a generator seeded by `"{seed}:{class_key}"`, so one class's order never depends on the others.
    """
    ordered = list(items)
    if sampling == "random":
        random.Random(f"{seed}:{class_key}").shuffle(ordered)
    elif sampling != "first":
        raise ValueError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}")
    return ordered


def split_counts(available: int, split: tuple[int, int, int]) -> dict[Split, int]:
    """How many of `available` images go to train, val and test.

    With enough images this is `split` itself. A short class fills test first, then val, then
    train gets the rest: every class keeps the same number of evaluation images for as long as it
    can, so accuracy stays comparable across classes, and only training data shrinks.
    """
    want = dict(zip(SPLITS, split, strict=True))
    left = min(available, sum(split))
    counts: dict[Split, int] = {"train": 0, "val": 0, "test": 0}
    for name in ("test", "val", "train"):
        counts[name] = min(want[name], left)
        left -= counts[name]
    return counts


def assign_splits(items: Sequence[T], split: tuple[int, int, int]) -> list[tuple[Split, T]]:
    """Label `items` (already in sampling order) train, then val, then test, by `split_counts`."""
    counts = split_counts(len(items), split)
    labels = [name for name in SPLITS for _ in range(counts[name])]
    return list(zip(labels, items, strict=False))


def suggest_split(n: int) -> tuple[int, int, int]:
    """A split of `n` images per class in the original study's 80/10/10 proportions."""
    held = round(n * 0.1)
    return n - 2 * held, held, held
