"""The Pathfinder and Path-X tasks (Linsley et al., NeurIPS 2018; Kim et al., ICLR 2020; LRA, Tay et
al., ICLR 2021): read the user's release folder (`release.py`), or images regenerated once into the
cache (`generator.py`).

Splits: LRA used TFDS percent slices in Beam output order, which nobody can reproduce (lra.md §3).
We use a seeded 80/10/10 permutation (seed = option `split_seed`, default the task seed) of
the valid images in sorted order (metadata files by integer name, then line order) and write
the index lists with sha256 checksums next to the cache (`<cache>/<task>/splits/*.json`), so a
split can be audited and reused.

The task options (`PathfinderOptions`) pick the difficulty folder, the seeds, how many images to
regenerate and the pooling; `data check` and `data generate` use them too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Literal
from pathlib import Path

import numpy as np
import torch

from harness.errors import UserError
from harness.files import atomic_write_text, sha256_file
from harness.records import Provenance
from harness.registry import register_task
from harness.task import Task, TaskData, TaskOptions, TaskSpec
from harness_tasks.common import generated_root, pool_pixels, scale_sizes, split_number, user_data
from harness_tasks.datafiles import output_folder
from harness_tasks.pathfinder.generator import CONTOUR_LENGTH, DIFFICULTIES, SnakeParams, generate_dataset, lra_params
from harness_tasks.pathfinder.release import (IMAGES_PER_DIFFICULTY, check_release, find_difficulty_dir, list_examples,
                                              load_image, metadata_files)

log = logging.getLogger(__name__)
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
NOT_DATA = ("workers", "metadata_format")  # options that never change the images (not in the cache key)


def split_indices(n: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded 80/10/10 permutation of range(n)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(n * SPLIT_FRACTIONS[0]), int(n * SPLIT_FRACTIONS[1])
    return dict(train=perm[:n_train], val=perm[n_train:n_train + n_val], test=perm[n_train + n_val:])


def write_split_file(path: Path, root: Path, seed: int, paths: list[str], splits: dict) -> dict:
    """Write the split's index lists (relative image paths) with sha256 checksums; returns the record."""
    lists = {s: [paths[i] for i in idx] for s, idx in splits.items()}
    record = dict(
        source=str(root.resolve()), split_seed=seed, fractions=list(SPLIT_FRACTIONS),
        metadata_sha256={str(m.relative_to(root)): sha256_file(m) for m in metadata_files(root)},
        counts={s: len(v) for s, v in lists.items()},
        sha256={s: hashlib.sha256("\n".join(v).encode()).hexdigest() for s, v in lists.items()},
        splits=lists,
    )
    atomic_write_text(path, json.dumps(record))
    return record


# -- tasks -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PathfinderOptions(TaskOptions):
    difficulty: str = "hard"  # easy / intermediate / hard = contour length 6 / 9 / 14 (or the folder name)
    distractors: Literal["per-difficulty", "baseline"] = "per-difficulty"  # distractor count per difficulty as LRA wrote it, or "baseline" (upstream)
    split_seed: int | None = None  # seed of the 80/10/10 split; None = the run seed
    data_seed: int | None = None  # seed of regenerated images; None = the run seed
    n: int | None = None  # images to regenerate without --data-dir; None = the scale's (250 smoke Pathfinder)
    pool: int | None = None  # mean-pool the image side by this divisor; None = the scale's (2 / 8 at smoke)
    workers: int | None = None  # processes that regenerate images; None = every core
    metadata_format: Literal["text", "npy"] = "text"  # generated metadata: the release's text or upstream's binary .npy


class PathfinderBase(Task):
    """Shared reader/generator logic; subclasses set `resolution` and `SCALES`."""

    Options = PathfinderOptions
    generatable = True
    resolution: int = 32
    # Per scale: examples per split, how many images to regenerate without user data (None: refuse,
    # too slow), and mean pooling of the image side (the smoke reduction).
    SCALES: dict = {}

    def sizes(self, scale: str) -> dict:
        s = scale_sizes(self.SCALES, scale)
        if self.options.pool is not None:
            s["pool"] = int(self.options.pool)
        if s["pool"] < 1 or self.resolution % s["pool"]:
            raise UserError(f"task {self.name} option pool={s['pool']}: expected a divisor of {self.resolution}")
        if self.options.n is not None:
            s["generate"] = int(self.options.n)
        s["seq_len"] = (self.resolution // s["pool"]) ** 2
        return s

    @property
    def folder(self) -> str:
        difficulty = self.options.difficulty
        folder = DIFFICULTIES.get(difficulty, difficulty)
        if folder not in CONTOUR_LENGTH:
            raise UserError(f"task {self.name} option difficulty={difficulty!r}: expected one of "
                            f"{', '.join(DIFFICULTIES)}")
        return folder

    @property
    def params(self) -> SnakeParams:
        return lra_params(self.resolution, self.folder, self.options.distractors)

    @property
    def split_seed(self) -> int:
        return self.seed if self.options.split_seed is None else int(self.options.split_seed)

    @property
    def data_seed(self) -> int:
        """Seed of regenerated images (option `data_seed`, default the task seed)."""
        return self.seed if self.options.data_seed is None else int(self.options.data_seed)

    @functools.cached_property
    def user_root(self) -> Path | None:
        """The user's difficulty folder under --data-dir, or None (then data is regenerated)."""
        return user_data(self.data_dir, lambda d: find_difficulty_dir(d, self.resolution, self.folder),
                         f"no pathfinder{self.resolution}/{self.folder}/metadata found; using regenerated data "
                         f"instead")

    def generated_dir(self) -> Path:
        """Regenerated images (release layout) in the cache; generated once, atomically."""
        s = self.sizes(self.scale)
        if s.get("generate") is None:
            raise UserError(
                f"task {self.name} at scale {self.scale} needs the real images: pass --data-dir with "
                f"pathfinder{self.resolution}/{self.folder}/ (LRA release), or generate them first with "
                f"`python -m harness data generate --task {self.name} --out DIR --n 200000 --workers W` "
                f"(hours of CPU time) and pass --data-dir DIR", exit_code=1)
        p = self.params
        root = generated_root(self.cache_dir)
        tag = hashlib.sha256(json.dumps(asdict(p), sort_keys=True).encode()).hexdigest()[:8]
        base = root / self.name / f"generated-seed{self.data_seed}-n{s['generate']}-{tag}"
        final = base / f"pathfinder{self.resolution}" / self.folder
        if (final / "manifest.json").is_file():
            return final
        tmp = base.with_name(base.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        workers = self.workers
        log.info(f"{self.name}: generating {s['generate']} images at {self.resolution} px (seed {self.data_seed}, "
                 f"{workers} workers) into {base}; done once, then cached")
        generate_dataset(tmp / f"pathfinder{self.resolution}" / self.folder, s["generate"], self.data_seed, p,
                         workers, self.options.metadata_format)
        if base.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
        else:
            os.replace(tmp, base)
        return final

    @property
    def workers(self) -> int:
        return int(self.options.workers) if self.options.workers is not None else os.cpu_count() or 1

    def source(self) -> tuple[Path, bool]:
        """(difficulty folder, is user data)."""
        user = self.user_root
        return (user, True) if user is not None else (self.generated_dir(), False)

    @functools.cached_property
    def provenance(self) -> Provenance:
        s = self.sizes(self.scale)
        reduction = f"n={s['train']}/{s['val']}/{s['test']}"
        if s["pool"] > 1:
            side = self.resolution // s["pool"]
            reduction += f", pool={s['pool']} ({side}x{side})"
        whole = self.scale == "paper" and s["pool"] == 1
        if self.user_root is not None:
            manifest = self.user_root / "manifest.json"
            if manifest.is_file():  # data written by `data generate`: regenerated, not the release
                try:
                    info = json.loads(manifest.read_text())
                    made, params = info["seed"], SnakeParams(**{k: tuple(v) if isinstance(v, list) else v
                                                                 for k, v in info["params"].items()})
                    images = int(info["counts"]["images"])
                except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
                    raise UserError(f"{manifest}: unreadable manifest ({type(exc).__name__}: {exc}); "
                                    f"regenerate it with `python -m harness data generate`", exit_code=1)
                return self.regenerated(made, images, params, None if whole else reduction)
            return Provenance("official", "lra-release", subset=None if whole else reduction,
                              parameters=dict(split_seed=self.split_seed))
        return self.regenerated(self.data_seed, s["generate"], self.params, None if whole else reduction)

    def regenerated(self, seed: int, images: int, p: SnakeParams, subset: str | None) -> Provenance:
        return Provenance("regenerated", "pathfinder-generator", subset=subset, parameters=dict(
            seed=seed, images=images, resolution=p.window, contour=p.contour_length,
            distractors=f"{p.num_distractor_snakes}x{p.distractor_length}",
            single_paddles=p.use_single_paddles, bytescale="scipy emulated",
            split=f"80/10/10 seed {self.split_seed}"))

    def cache_key(self, split: str) -> str:
        """Identity of a built split: the base identity (minus the options that never change the
        data), the generator parameters and, for user data, the metadata files' sizes and times."""
        ident = dict(task=self.name, version=self.spec.version, split=split, scale=self.scale,
                     seed=self.seed, sizes=self.sizes(self.scale), params=asdict(self.params),
                     options={k: v for k, v in self.options.data_changed().items() if k not in NOT_DATA},
                     data_dir=str(self.data_dir.resolve()) if self.data_dir else None)
        if self.user_root is not None:
            ident["metadata"] = [(m.name, m.stat().st_size, m.stat().st_mtime_ns)
                                 for m in metadata_files(self.user_root)]
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @functools.cached_property
    def split_lists(self) -> tuple[Path, list[str], list[int], dict]:
        """Read metadata, split 80/10/10 and write the index lists (with checksums) to disk (once)."""
        root, _ = self.source()
        paths, labels, _ = list_examples(root)
        if len(paths) < 3:
            raise UserError(f"{root}: only {len(paths)} usable images; need at least 3 for 80/10/10", exit_code=1)
        splits = split_indices(len(paths), self.split_seed)
        cache = generated_root(self.cache_dir)
        digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
        write_split_file(cache / self.name / "splits" / f"{root.name}-{digest}-seed{self.split_seed}.json",
                         root, self.split_seed, paths, splits)
        return root, paths, labels, splits

    def build(self, split: str) -> TaskData:
        split_number(self.name, split)  # a UserError for an unknown split
        s = self.sizes(self.scale)
        root, paths, labels, splits = self.split_lists
        index = splits[split][: s[split]]  # smaller scales use the head of each seeded split
        n, length = len(index), s["seq_len"]
        pixels = np.empty((n, length), dtype=np.uint8)  # filled image by image: no second full copy
        for row, i in enumerate(index):
            pixels[row] = pool_pixels(load_image(root / paths[i], self.resolution)[None], s["pool"])[0]
        return TaskData(inputs=torch.from_numpy(pixels), lengths=torch.full((n,), length, dtype=torch.int64),
                        labels=torch.tensor([labels[i] for i in index], dtype=torch.int64),
                        provenance=self.provenance)

    # -- data check / data generate ------------------------------------------------------------------
    def check(self, data_dir: Path) -> list[str]:
        """The difficulty folder (option `difficulty`) of this resolution under `data_dir`."""
        return check_release(data_dir, self.resolution, self.folder)

    def generate(self, out_dir: Path, n: int | None = None, seed: int = 0, workers: int = 1,
                 progress=None) -> dict:
        """`n` images (default the release's 200,000) into `out_dir/pathfinder{R}/<difficulty>` with
        manifest.json; one batch per worker process, the same output for any number of workers."""
        folder = Path(out_dir) / f"pathfinder{self.resolution}" / self.folder
        params = self.params
        with output_folder(folder):
            manifest = generate_dataset(folder, int(n) if n is not None else IMAGES_PER_DIFFICULTY, int(seed),
                                        params, int(workers), self.options.metadata_format, progress=progress)
        manifest["path"] = str(folder / "manifest.json")
        return manifest


@register_task("pathfinder")
class Pathfinder(PathfinderBase):
    """Pathfinder 32x32, hard (curv_contour_length_14), as scored in LRA."""

    resolution = 32
    spec = TaskSpec(
        seq_len=1024, input_kind="real", vocab_size=0, num_classes=2,
        splits=dict(train=160000, val=20000, test=20000), lra=True, label="Pathfinder", order=5, version="1",
        real_mean=0.5, real_std=0.5, real_scale=1 / 255,
        description="Pathfinder 32x32 (curv_contour_length_14): are the two markers on one contour? "
                    "Pixels as real values, normalised (p/255-0.5)/0.5",
    )
    SCALES = {
        "smoke": dict(train=200, val=25, test=25, generate=250, pool=2, batch_size=16),
        "small": dict(train=8000, val=1000, test=1000, generate=10000, pool=1),
        "paper": dict(train=160000, val=20000, test=20000, generate=None, pool=1),
    }


@register_task("pathx")
class PathX(PathfinderBase):
    """Path-X: Pathfinder at 128x128 (16,384 pixels), hard (curv_contour_length_14)."""

    resolution = 128
    spec = TaskSpec(
        seq_len=16384, input_kind="real", vocab_size=0, num_classes=2,
        splits=dict(train=160000, val=20000, test=20000), lra=True, label="Path-X", order=6, version="1",
        real_mean=0.5, real_std=0.5, real_scale=1 / 255,
        description="Path-X: Pathfinder at 128x128 (curv_contour_length_14), 16K pixels as real values",
    )
    SCALES = {
        "smoke": dict(train=32, val=4, test=4, generate=40, pool=8, batch_size=2, total_steps=30),
        "small": dict(train=800, val=100, test=100, generate=1000, pool=2),
        "paper": dict(train=160000, val=20000, test=20000, generate=None, pool=1),
    }
