"""Helpers every task family shares: split names, per-scale sizes, seeded subsets, pixel pooling,
finding a data folder in the layouts users unpack, and cheap file fingerprints for cache keys.

The tools of `data check` and `data generate` (problem lists, manifests, output folders) are in
`harness_tasks.datafiles`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import numpy as np

from harness.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# The official archive unpacks to a doubled folder (lra.md §2): a release folder is looked for in
# D, D/lra_release and D/lra_release/lra_release.
RELEASE_ROOTS = ("", "lra_release", "lra_release/lra_release")


def scale_sizes(scales: dict, scale: str) -> dict:
    """A copy of the sizes of `scale` from a family's table, or a UserError naming the scales."""
    if scale not in scales:
        raise UserError(f"--scale {scale!r}: expected one of {', '.join(scales)}")
    return dict(scales[scale])


def split_number(task: str, split: str) -> int:
    """The position of `split` in SPLITS (it seeds per-split generators), or a UserError."""
    if split not in SPLITS:
        raise UserError(f"task {task}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return SPLITS.index(split)


def seeded_subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """`n` distinct indices of range(n_total) in a seeded random order (all of them when n >= n_total)."""
    perm = np.random.default_rng(seed).permutation(n_total)
    return perm[: min(n, n_total)]


def pool_pixels(images: np.ndarray, pool: int) -> np.ndarray:
    """(N, S, S) uint8 -> (N, (S/pool)^2) uint8 by mean pooling, rounded to the nearest; pool 1 only
    flattens."""
    n, side = images.shape[0], images.shape[1]
    if pool == 1:
        return images.reshape(n, side * side)
    x = images.reshape(n, side // pool, pool, side // pool, pool).astype(np.float32).mean(axis=(2, 4))
    return np.rint(x).astype(np.uint8).reshape(n, -1)


def release_folders(data_dir: Path, folder: str) -> list[Path]:
    """`folder` under each release root of `data_dir` (D/folder, D/lra_release/folder, ...)."""
    return [data_dir / root / folder for root in RELEASE_ROOTS]  # Path("D") / "" is D


def first_folder(candidates: Iterable[Path], holds: Callable[[Path], bool]) -> Path | None:
    """The first candidate folder for which `holds(folder)` is true, or None."""
    return next((c for c in candidates if holds(c)), None)


Found = TypeVar("Found")


def user_data(data_dir: Path | None, find: Callable[[Path], Found | None], otherwise: str) -> Found | None:
    """What `find(data_dir)` locates of the user's data (None without --data-dir). When --data-dir holds
    nothing `find` recognises, a warning says so and what the task uses instead (`otherwise`)."""
    if data_dir is None:
        return None
    found = find(data_dir)
    if found is None:
        log.warning(f"--data-dir {data_dir}: {otherwise}")
    return found


def generated_root(cache_dir: Path | None) -> Path:
    """Where a task keeps the data it generates: the run's cache folder, else ./.cache."""
    return cache_dir if cache_dir is not None else Path(".cache")


def files_fingerprint(paths: list[Path]) -> str:
    """Cheap identity of a set of files (names, sizes, modification times) for cache keys."""
    h = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]
