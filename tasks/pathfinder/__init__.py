"""Pathfinder and Path-X (Linsley et al., NeurIPS 2018; Kim et al., ICLR 2020; LRA, Tay et al., ICLR 2021).

Spec: shared/spec/lra.md §2 (release layout), §5 (generator), §6 (how harnesses read it).

An image shows two long dashed contours ("snakes") among shorter distractor snakes, and two circular
markers. Label 1: both markers sit on the ends of the same snake; label 0: one on each. The model
sees the image as a flat sequence of pixels (32x32 = 1024 for `pathfinder`, 128x128 = 16384 for
`pathx`), one real value per pixel (embedded as (p/255 - 0.5)/0.5, mega.md §6).

Three modules:
- `generator`: the snakes image generator (a re-implementation of `drewlinsley/pathfinder` with
  LRA's parameters) and `generate_dataset`, which writes the release layout with a manifest;
- `release`: the reader of released (or generated) `pathfinder{R}/<difficulty>` folders and their check;
- `task`: the registered tasks `pathfinder` and `pathx`, their options and seeded splits.

Importing the package registers the tasks; the names below are the package's public interface.
"""

from harness_tasks.pathfinder.generator import (CONTOUR_LENGTH, DIFFICULTIES, LRA_SETTINGS, SnakeParams,
                                                generate_batch, generate_dataset, lra_params, marker, render)
from harness_tasks.pathfinder.release import (BLACKLIST, find_difficulty_dir, list_examples, load_image,
                                              metadata_files, parse_metadata)
from harness_tasks.pathfinder.task import PathfinderBase, PathfinderOptions, Pathfinder, PathX, split_indices

__all__ = ["BLACKLIST", "CONTOUR_LENGTH", "DIFFICULTIES", "LRA_SETTINGS", "PathX", "Pathfinder", "PathfinderBase",
           "PathfinderOptions", "SnakeParams", "find_difficulty_dir", "generate_batch", "generate_dataset",
           "list_examples", "load_image", "lra_params", "marker", "metadata_files", "parse_metadata", "render",
           "split_indices"]
