"""Build the embedded Fashion-MNIST subset, `tasks/data/fashion_mnist_16x16.npz`, from Debian's copy.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
Machine Learning Algorithms"; MIT licence, copyright Zalando SE) as installed by Debian's package
`dataset-fashion-mnist` (IDX files in /usr/share/datasets/fashion-mnist/).

The file holds exactly the images the `image` task reads at `--scale smoke` with split seed 0, in
the task's order and already in the task's form: 28x28 zero-padded to 32x32, 2x2 rounded mean
pooling to 16x16 = 256 uint8 pixels per image. The images are selected by the task's own code
(`ImageTask.split_index` and `pool_pixels`), so the subset cannot drift from what the full copy
gives; tests/tasks/test_default_data.py checks the equality whenever the Debian copy is installed.

Arrays: `{train,val,test}_pixels` (N, 256) uint8, `{train,val,test}_labels` (N,) uint8, and
`{train,val,test}_index` (N,) int32, each image's position in its Debian file (train and val index
`train-images-idx3-ubyte`, test indexes `t10k-images-idx3-ubyte`).

The zip is written with fixed member timestamps, so the same input gives the same bytes (and the
sha256 recorded in tasks/data/README.md) with the same zlib.

    python -m harness_tasks.data.build_fashion_mnist [--source DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from harness_tasks.common import SPLITS, pool_pixels
from harness_tasks.image import (EMBEDDED_FASHION, EMBEDDED_SCALE, EMBEDDED_SPLIT_SEED, FASHION_FILES, FASHION_MNIST_DIR,
                                 ImageTask, read_fashion_mnist)

ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: no build time in the file


def subset_arrays(source: Path) -> dict[str, np.ndarray]:
    """The smoke-scale images (split seed 0) of the Debian copy in `source`, as named arrays."""
    task = ImageTask(scale=EMBEDDED_SCALE, seed=EMBEDDED_SPLIT_SEED,
                     options={"fashion_mnist_dir": str(source), "split_seed": EMBEDDED_SPLIT_SEED})
    sizes = task.sizes(EMBEDDED_SCALE)
    arrays = {}
    for split in SPLITS:
        images, labels = read_fashion_mnist(source, "test" if split == "test" else "train")
        index = np.arange(len(images)) if split == "test" else task.split_index(len(images), split)
        index = index[: sizes[split]]
        arrays[f"{split}_pixels"] = pool_pixels(images[index], sizes["pool"])  # (N, 256) uint8
        arrays[f"{split}_labels"] = labels[index].astype(np.uint8)
        arrays[f"{split}_index"] = index.astype(np.int32)
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz (np.load reads it like np.savez_compressed's) with deflated members and fixed timestamps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue(), compresslevel=9)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=FASHION_MNIST_DIR,
                        help="folder with the four Fashion-MNIST IDX .gz files (default: Debian's)")
    parser.add_argument("--out", type=Path, default=EMBEDDED_FASHION, help="the .npz to write")
    args = parser.parse_args(argv)
    missing = [f for pair in FASHION_FILES.values() for f in pair if not (args.source / f).is_file()]
    if missing:
        print(f"{args.source}: missing {', '.join(missing)}; install Debian's dataset-fashion-mnist "
              f"(apt-get install dataset-fashion-mnist) or pass --source", file=sys.stderr)
        return 2
    arrays = subset_arrays(args.source)
    write_npz(args.out, arrays)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    counts = "/".join(str(len(arrays[f"{split}_labels"])) for split in SPLITS)
    print(f"{args.out}: {args.out.stat().st_size} bytes, sha256 {digest}, train/val/test {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
