"""Image: sequential grayscale CIFAR-10 (Krizhevsky 2009; LRA, Tay et al., ICLR 2021), lra.md §1, §3.

A 32x32 image becomes a sequence of 1024 gray pixels in row-major order; 10 classes, accuracy.

Grayscale follows LRA's `tf.image.rgb_to_grayscale`: pixels to float32 (x * (1/255)), weighted sum
0.2989 R + 0.5870 G + 0.1140 B in float32, back to uint8 as TF's `convert_image_dtype` does: multiply
by 255.5 and truncate (saturating cast). So gray = trunc(255.5 * sum_c w_c * x_c / 255); PIL's
`convert('L')` (0.299/0.587/0.114, rounded) can differ by 1.

Two registered tasks share this code:
- `image`: pixels as real values (input_kind "real", stored uint8, embedded as (p/255 - mean)/std,
  the MEGA / S4 style, mega.md §6); mean/std are CIFAR-10's 0.48/0.24, and a stand-in uses its own
  statistics (`input_spec()`);
- `image_tokens`: pixels as tokens, id = pixel + 1 (vocab 257), so a black pixel is not padding
  (LRA used the raw value 0-255 and masked 0, lra.md §3 "padding-mask quirk").

Data (`--data-dir D`): the python pickles of CIFAR-10, `cifar-10-batches-py/` (D/cifar-10-batches-py
or D itself) with `data_batch_1..5` and `test_batch`. They are unpickled with a restricted
unpickler that only admits numpy arrays, so a hostile file cannot run code. Split: 45,000 / 5,000
from a seeded permutation of the 50,000 training images (option `split_seed`, default the task
seed; LRA used train[:90%] / train[90%:]), test = the 10,000 test images. Smaller scales use the head
of each seeded split, and smoke mean-pools 2x2 to 16x16 = 256 pixels (recorded in the provenance).

Without CIFAR-10 the task is a labelled stand-in, never silently (provenance kind "stand-in"):
- Fashion-MNIST (Xiao et al. 2017, MIT licence, Zalando SE), 28x28 zero-padded to 32x32, split like
  CIFAR's training set (5,000 validation images of the 60,000); a different, easier data set with
  the same shape. Read from, in order:
  * the full copy of Debian's `dataset-fashion-mnist` package (IDX .gz files in
    /usr/share/datasets/fashion-mnist/, or option `fashion_mnist_dir`);
  * the subset embedded in this repository, `tasks/data/fashion_mnist_16x16.npz` (built by
    `tasks/data/build_fashion_mnist.py` from the Debian copy): exactly the already-pooled 16x16
    images the smoke scale uses with split seed 0, so the default run needs nothing installed and
    gives the same numbers as the full copy. It serves only that scale and split seed.
- synthetic shapes, when neither fits (with a warning): ten classes of drawn shapes (disk, ring,
  square, frame, triangle, bars, diagonal, plus, cross) with random size, place, brightness and
  noise.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import logging
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from harness.errors import UserError
from harness.records import Provenance
from harness.registry import register_task
from harness.task import Task, TaskData, TaskOptions, TaskSpec
from harness_tasks.common import (SPLITS, files_fingerprint, first_folder, pool_pixels, scale_sizes, split_number,
                                   user_data)
from harness_tasks.datafiles import Problems

log = logging.getLogger(__name__)


SIDE = 32
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
IMAGES_PER_BATCH = 10000  # in each CIFAR-10 python batch file
TF_GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# Smoke: 2,000 test images put the test set's binomial standard error near 1 point (statistics.md).
SCALES = {
    # smoke: 200 steps of batch 16 (3,200 of the 5,000 training images) keep the default suite
    # (4 models x 3 seeds on 2 CPU cores) within minutes; a 2,000-image test set resolves ~1 point
    "smoke": dict(train=5000, val=1000, test=2000, pool=2, batch_size=16, total_steps=200),
    "small": dict(train=10000, val=1000, test=2000, pool=1),
    "paper": dict(train=45000, val=5000, test=10000, pool=1),
}
N_VAL = 5000  # of the 50,000 CIFAR training images
EMBEDDED_FASHION = Path(__file__).resolve().parent / "data" / "fashion_mnist_16x16.npz"
EMBEDDED_SCALE, EMBEDDED_SPLIT_SEED = "smoke", 0  # the only smoke data the embedded subset holds
REBUILD = "python -m harness_tasks.data.build_fashion_mnist"
# Pixel statistics of p/255, the real-valued embedding's (v - mean) / std. CIFAR-10: MEGA's / S4's
# constants. Fashion-MNIST: all 60,000 training images zero-padded to 32x32 (computed once from the
# Debian copy; tests/tasks/test_default_data.py recomputes them). Synthetic shapes: 2,000 drawn images.
CIFAR_STATS = (0.48, 0.24)
FASHION_STATS = (0.2190, 0.3318)
SHAPES_STATS = (0.097, 0.232)


# -- CIFAR-10 --------------------------------------------------------------------------------------
class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of numpy arrays and lists) and refuses anything else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (N, 3, 32, 32) uint8 RGB, (N,) int64 labels."""
    if not path.is_file():
        raise UserError(f"{path}: missing; cifar-10-batches-py needs {', '.join(TRAIN_FILES)} and {TEST_FILE}",
                        exit_code=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core alias in old pickles
            batch = NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:
        raise UserError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc}); expected the "
                        f"pickles of cifar-10-python.tar.gz", exit_code=1)
    if data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE or len(labels) != len(data):
        raise UserError(f"{path}: data {data.shape} / labels {labels.shape}; expected (N, 3072) and (N,)",
                        exit_code=1)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{path}: labels outside 0-9", exit_code=1)
    return data.reshape(-1, 3, SIDE, SIDE), labels


def tf_grayscale(rgb: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 -> (N, H, W) uint8 as tf.image.rgb_to_grayscale (see module docstring)."""
    flt = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    gray = np.tensordot(TF_GRAY_WEIGHTS, flt, axes=([0], [1]))  # (N, H, W) float32
    return np.clip(gray * np.float32(255.5), 0, 255).astype(np.uint8)  # saturate_cast truncates


def find_cifar_dir(data_dir: Path) -> Path | None:
    return first_folder((data_dir / "cifar-10-batches-py", data_dir),
                        lambda c: (c / TEST_FILE).is_file() or (c / TRAIN_FILES[0]).is_file())


def check_cifar(data_dir: Path, problems: Problems) -> None:
    """Every batch file present and unpicklable as a CIFAR-10 batch of the release's size."""
    folder = find_cifar_dir(data_dir)
    if folder is None:
        problems.add(f"{data_dir}: no cifar-10-batches-py/ with data_batch_1..5 and test_batch found")
        return
    for name in TRAIN_FILES + (TEST_FILE,):
        path = folder / name
        if not problems.readable(path):
            continue
        try:
            images, _ = read_cifar_batch(path)
        except UserError as exc:
            problems.add(str(exc))
            continue
        if len(images) != IMAGES_PER_BATCH:
            problems.add(f"{path}: {len(images)} images, a CIFAR-10 batch has {IMAGES_PER_BATCH}", minor=True)


# -- stand-ins -------------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or raw): uint8 array of the stored shape."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file", exit_code=1)
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path}: IDX header says {shape} but holds {data.size} values", exit_code=1)
    return data.reshape(shape)


def read_fashion_mnist(root: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32) uint8 (28x28 zero-padded by 2 on each side), (N,) labels."""
    images_file, labels_file = FASHION_FILES[part]
    images, labels = read_idx(root / images_file), read_idx(root / labels_file).astype(np.int64)
    return np.pad(images, ((0, 0), (2, 2), (2, 2))), labels


@functools.lru_cache(maxsize=2)
def read_embedded_fashion(path: Path = EMBEDDED_FASHION) -> dict:
    """The embedded subset: {split: ((N, 256) uint8 pooled pixels, (N,) int64 labels)} and its sha256."""
    try:
        raw = path.read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            out = {split: (np.asarray(z[f"{split}_pixels"]), np.asarray(z[f"{split}_labels"]).astype(np.int64))
                   for split in SPLITS}
    except Exception as exc:
        raise UserError(f"{path}: unreadable embedded Fashion-MNIST subset ({type(exc).__name__}: {exc}); "
                        f"rebuild it with `{REBUILD}` or install Debian's dataset-fashion-mnist", exit_code=1)
    for split, (pixels, labels) in out.items():
        if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != (SIDE // 2) ** 2 \
                or labels.shape != (len(pixels),) or (labels.size and not 0 <= labels.min() <= labels.max() <= 9):
            raise UserError(f"{path}: split {split} holds pixels {pixels.shape} {pixels.dtype} and labels "
                            f"{labels.shape}; expected (N, 256) uint8 and N labels 0-9; rebuild it with "
                            f"`{REBUILD}`", exit_code=1)
    out["sha256"] = hashlib.sha256(raw).hexdigest()
    return out


def draw_shape(rng: np.random.Generator, label: int) -> np.ndarray:
    """One 32x32 image of shape class `label` (0-9) with random geometry, brightness and noise."""
    im = Image.new("L", (SIDE, SIDE), 0)
    d = ImageDraw.Draw(im)
    r = int(rng.integers(5, 11))
    cy, cx = (int(v) for v in rng.integers(r + 1, SIDE - r - 1, size=2))
    box = [cx - r, cy - r, cx + r, cy + r]
    ink = int(rng.integers(120, 256))
    width = int(rng.integers(1, 3))
    if label == 0:
        d.ellipse(box, fill=ink)
    elif label == 1:
        d.ellipse(box, outline=ink, width=width)
    elif label == 2:
        d.rectangle(box, fill=ink)
    elif label == 3:
        d.rectangle(box, outline=ink, width=width)
    elif label == 4:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=ink)
    elif label == 5:
        d.rectangle([cx - r, cy - width, cx + r, cy + width], fill=ink)
    elif label == 6:
        d.rectangle([cx - width, cy - r, cx + width, cy + r], fill=ink)
    elif label == 7:
        d.line([(cx - r, cy - r), (cx + r, cy + r)], fill=ink, width=width + 1)
    elif label == 8:
        d.line([(cx - r, cy), (cx + r, cy)], fill=ink, width=width + 1)
        d.line([(cx, cy - r), (cx, cy + r)], fill=ink, width=width + 1)
    else:
        d.line([(cx - r, cy - r), (cx + r, cy + r)], fill=ink, width=width + 1)
        d.line([(cx - r, cy + r), (cx + r, cy - r)], fill=ink, width=width + 1)
    noise = rng.normal(0, 12, size=(SIDE, SIDE))
    return np.clip(np.asarray(im, dtype=np.float64) + noise, 0, 255).astype(np.uint8)


def synthetic_shapes(n: int, seed) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = np.stack([draw_shape(rng, int(c)) for c in labels]) if n else np.zeros((0, SIDE, SIDE), np.uint8)
    return images, labels.astype(np.int64)


# -- tasks -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImageOptions(TaskOptions):
    pool: int | None = None  # mean-pool the image side by this divisor of 32; None = the scale's (2 at smoke)
    split_seed: int | None = None  # seed of the train/val permutation; None = the run seed
    fashion_mnist_dir: str = str(FASHION_MNIST_DIR)  # where the full Fashion-MNIST stand-in is looked for


class ImageBase(Task):
    """Shared reader, splits and stand-ins; subclasses choose how pixels are presented."""

    needs_data = True
    Options = ImageOptions

    def sizes(self, scale: str) -> dict:
        s = scale_sizes(SCALES, scale)
        if self.options.pool is not None:
            s["pool"] = int(self.options.pool)
        if s["pool"] not in (1, 2, 4, 8, 16, 32):
            raise UserError(f"task {self.name} option pool={s['pool']}: expected a divisor of 32")
        s["seq_len"] = (SIDE // s["pool"]) ** 2
        return s

    @property
    def split_seed(self) -> int:
        return self.seed if self.options.split_seed is None else int(self.options.split_seed)

    @functools.cached_property
    def cifar_dir(self) -> Path | None:
        return user_data(self.data_dir, find_cifar_dir, "no cifar-10-batches-py/ found; Image uses a stand-in")

    @property
    def fashion_dir(self) -> Path:
        return Path(self.options.fashion_mnist_dir)

    def embedded_fits(self) -> bool:
        """The embedded subset holds this run's images: smoke scale, 2x2 pooling, split seed 0."""
        return (self.scale == EMBEDDED_SCALE and self.split_seed == EMBEDDED_SPLIT_SEED
                and self.sizes(self.scale)["pool"] == SCALES[EMBEDDED_SCALE]["pool"] and EMBEDDED_FASHION.is_file())

    @functools.cached_property
    def source_name(self) -> str:
        """cifar10 | fashion-mnist (the full Debian copy) | fashion-mnist-embedded | synthetic-shapes."""
        if self.cifar_dir is not None:
            return "cifar10"
        if all((self.fashion_dir / f).is_file() for pair in FASHION_FILES.values() for f in pair):
            return "fashion-mnist"
        if self.embedded_fits():
            return "fashion-mnist-embedded"
        log.warning(f"task {self.name}: no CIFAR-10 (--data-dir) and no Debian dataset-fashion-mnist, and the "
                    f"embedded Fashion-MNIST subset serves only --scale smoke with data seed 0; using "
                    f"synthetic shapes")
        return "synthetic-shapes"

    def input_spec(self) -> TaskSpec:
        """The spec with the pixel statistics of the data set actually read (real-valued input only)."""
        if self.spec.input_kind != "real":
            return self.spec
        name = self.source_name
        mean, std = (CIFAR_STATS if name == "cifar10" else SHAPES_STATS if name == "synthetic-shapes"
                     else FASHION_STATS)
        return dataclasses.replace(self.spec, real_mean=mean, real_std=std)

    @property
    def provenance(self) -> Provenance:
        s = self.sizes(self.scale)
        reduced = f"n={s['train']}/{s['val']}/{s['test']}"
        if s["pool"] > 1:
            reduced += f", pool={s['pool']} ({SIDE // s['pool']}x{SIDE // s['pool']})"
        name = self.source_name
        if name == "cifar10":
            whole = self.scale == "paper" and s["pool"] == 1
            return Provenance("official", "cifar-10", subset=None if whole else reduced,
                              parameters=dict(reader="cifar-10-batches-py", grayscale="tf.image.rgb_to_grayscale",
                                              split_seed=self.split_seed))
        if name == "synthetic-shapes":
            return Provenance("stand-in", "synthetic-shapes", subset=reduced, parameters=dict(seed=self.seed))
        params = dict(image="28x28 zero-padded to 32x32", split_seed=self.split_seed)
        if name == "fashion-mnist":
            params["copy"] = f"full (Debian dataset-fashion-mnist, {self.fashion_dir})"
        else:
            params["copy"] = "embedded subset (tasks/data/fashion_mnist_16x16.npz)"
            params["sha256"] = read_embedded_fashion()["sha256"]
        return Provenance("stand-in", "fashion-mnist", subset=reduced, parameters=params)

    def cache_key(self, split: str) -> str:
        ident = super().cache_key(split) + self.source_name
        if self.cifar_dir is not None:
            files = [self.cifar_dir / f for f in TRAIN_FILES + (TEST_FILE,) if (self.cifar_dir / f).is_file()]
            ident += files_fingerprint(files)
        elif self.source_name == "fashion-mnist":
            ident += str(self.fashion_dir.resolve())
        elif self.source_name == "fashion-mnist-embedded":
            ident += read_embedded_fashion()["sha256"]
        return hashlib.sha256(ident.encode()).hexdigest()[:16]

    def split_index(self, n_images: int, split: str) -> np.ndarray:
        """Indices into the training images of the train or val split (seeded permutation, val first)."""
        perm = np.random.default_rng(self.split_seed).permutation(n_images)
        n_val = min(N_VAL, n_images // 10)
        return perm[:n_val] if split == "val" else perm[n_val:]

    def gray_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Full split (before the scale's head cut): (N, 32, 32) uint8 gray images, (N,) labels."""
        name = self.source_name
        if name == "synthetic-shapes":
            s = self.sizes(self.scale)
            return synthetic_shapes(s[split], seed=[self.seed, split_number(self.name, split)])
        if name == "cifar10":
            if split == "test":
                rgb, labels = read_cifar_batch(self.cifar_dir / TEST_FILE)
                return tf_grayscale(rgb), labels
            parts = [read_cifar_batch(self.cifar_dir / f) for f in TRAIN_FILES]
            images = tf_grayscale(np.concatenate([p[0] for p in parts]))
            labels = np.concatenate([p[1] for p in parts])
        else:
            images, labels = read_fashion_mnist(self.fashion_dir, "test" if split == "test" else "train")
            if split == "test":
                return images, labels
        index = self.split_index(len(images), split)
        return images[index], labels[index]

    def pixels(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, L) uint8 pixels (pooled at small scales) and labels for a split."""
        split_number(self.name, split)  # a UserError for an unknown split
        s = self.sizes(self.scale)
        if self.source_name == "fashion-mnist-embedded":  # stored already pooled
            pixels, labels = read_embedded_fashion()[split]
            if len(pixels) < s[split]:
                raise UserError(f"{EMBEDDED_FASHION}: {len(pixels)} {split} images, the smoke scale needs "
                                f"{s[split]}; rebuild it with `{REBUILD}`", exit_code=1)
            return pixels[: s[split]], labels[: s[split]]
        images, labels = self.gray_split(split)
        images, labels = images[: s[split]], labels[: s[split]]
        return pool_pixels(images, s["pool"]), labels

    def check(self, data_dir: Path) -> list[str]:
        """The CIFAR-10 python batches under `data_dir` (stand-ins need no check)."""
        problems = Problems()
        check_cifar(data_dir, problems)
        return problems.result()


@register_task("image")
class ImageTask(ImageBase):
    spec = TaskSpec(
        seq_len=1024, input_kind="real", vocab_size=0, num_classes=10,
        splits=dict(train=45000, val=5000, test=10000), lra=True, label="Image", order=4, version="1",
        real_mean=0.48, real_std=0.24, real_scale=1 / 255,
        description="Sequential grayscale CIFAR-10 (TF grayscale), 1024 pixels as real values "
                    "normalised (p/255-0.48)/0.24 (a stand-in uses its own pixel statistics)",
    )

    def build(self, split: str) -> TaskData:
        pixels, labels = self.pixels(split)
        n, length = pixels.shape
        return TaskData(inputs=torch.from_numpy(pixels.copy()), lengths=torch.full((n,), length, dtype=torch.int64),
                        labels=torch.from_numpy(labels.copy()), provenance=self.provenance)


@register_task("image_tokens")
class ImageTokens(ImageBase):
    spec = TaskSpec(
        seq_len=1024, input_kind="tokens", vocab_size=257, num_classes=10,
        splits=dict(train=45000, val=5000, test=10000), lra=False, version="1",
        description="Sequential grayscale CIFAR-10 as 1024 pixel tokens (id = pixel+1, 0 = pad), LRA's "
                    "token input without masking black pixels; an input variant of LRA Image (`image`), "
                    "kept out of the LRA average so Image is not counted twice",
    )

    def build(self, split: str) -> TaskData:
        pixels, labels = self.pixels(split)
        n, length = pixels.shape
        return TaskData(inputs=torch.from_numpy(pixels.astype(np.int16) + 1),
                        lengths=torch.full((n,), length, dtype=torch.int64),
                        labels=torch.from_numpy(labels.copy()), provenance=self.provenance)
