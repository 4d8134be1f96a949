"""The Pathfinder image generator: a re-implementation, in our own words, of `drewlinsley/pathfinder`
(`snakes2.py` + `snakes.py`) with the parameters of LRA's TFDS builder docstrings (lra.md §5).

`render` draws one image; `generate_dataset` writes `n` of them in the release layout
(`imgs/<batch>/sample_<i>.png`, `metadata/<batch>.npy`) with a `manifest.json`, one batch per
worker process.

Generator decisions (recorded in every `regenerated(...)` provenance string):
- `num_distractor_snakes` is RECOMPUTED per difficulty: K // (contour_length // 3) with K = 20 /
  22 / 35 / 30 for 32 / 64 / 128 / 256 px, as LRA's docstrings write it after setting
  contour_length = 14 (5 / 5 / 8 / 7 distractors of 4 paddles for the hard split). The upstream
  wrapper computed it once from the baseline length; the task option `distractors=baseline` selects that.
- `use_single_paddles = False`, as `snakes2_wrapper.py` sets it (the `Args` default True would
  scatter hundreds of single paddles; nothing in LRA asks for that).
- scipy byte-scaling is emulated: every `scipy.misc.imresize` / `imsave` is replaced by
  `bytescale` (float -> (x - min)/(max - min)*255, +0.5, truncated; uint8 passes unchanged)
  followed by PIL's Lanczos resize in mode `L`, which is what scipy did internally. So the saved
  PNG is normalised to its brightest pixel, and a paddle mask used as a dilation kernel keeps only
  pixels that reach 255 (upstream casts the [0, 1] float mask to uint8).
- OpenCV's `dilate` is emulated with numpy (kernel anchored at its centre, border ignored).
- Python 2 semantics: integer division for distractor lengths; `np.round` (half to even) where
  upstream rounds; `ceil` in coordinate translation.
- Quirks kept on purpose: at 32 px distractors use the snake contrast (2.0) while the targets
  use 0.75 x 2.0, so distractors can be the brightest pixels; after the two target snakes only the
  second snake's last paddle joins the occupancy mask; the second seed paddle is not checked
  against the occupancy mask.
- Randomness comes from `numpy.random.default_rng([seed, batch_id])` per batch, so the output is
  a pure function of (seed, n, parameters), whatever the number of workers. The images are new
  samples from the same distribution, not the released images (lra.md §5).
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from harness.errors import UserError
from harness.files import sha256_file
from harness_tasks.datafiles import write_manifest

DIFFICULTIES = {"easy": "curv_baseline", "intermediate": "curv_contour_length_9",
                "hard": "curv_contour_length_14"}
CONTOUR_LENGTH = {"curv_baseline": 6, "curv_contour_length_9": 9, "curv_contour_length_14": 14}
LANCZOS = getattr(Image, "Resampling", Image).LANCZOS  # Pillow >= 9.1 moved the constant


# -- parameters ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SnakeParams:
    """One generator setting (`snakes2_wrapper.Args` after LRA's overrides)."""

    window: int  # image side in pixels (32 Pathfinder, 128 Path-X)
    contour_length: int  # paddles per target snake: 6 easy / 9 intermediate / 14 hard
    distractor_length: int  # paddles per distractor snake: contour_length // 3
    num_distractor_snakes: int  # K // distractor_length, K per resolution (LRA_SETTINGS)
    padding: int = 22  # blocked border of the occupancy mask, px
    antialias: int = 4  # super-resolution factor of paddle and marker drawing
    margins: tuple = (4,)  # paddle margin choices (px), one drawn per image
    paddle_length: int = 5  # px per paddle (dash)
    paddle_thickness: float = 1.5  # px; thickness * antialias must be an integer
    marker_radius: float = 3  # px
    seed_distance: int = 27  # distance between the two target snakes' tails, px
    continuity: float = 1.4  # turn penalty: higher = straighter snakes
    snake_contrasts: tuple = (1.0,)  # per-snake intensity choices
    paddle_contrasts: tuple = (1.0,)  # per-paddle intensity choices (times the snake's)
    use_single_paddles: bool = False  # single-paddle clutter (snakes2_wrapper sets False)
    max_distractor_contour_retrial: int = 4  # retries per distractor snake before skipping it
    max_paddle_retrial: int = 2  # retries per paddle placement

    def metadata_fields(self, margin: int) -> list:
        """Fields 4..10 of a metadata line (after subdir, filename, index, label)."""
        return [self.continuity, self.contour_length, self.distractor_length, self.paddle_length,
                self.paddle_thickness, margin, len(self.paddle_contrasts)]


# LRA's overrides per resolution (lra_benchmarks/data/pathfinder.py docstrings); K is the numerator of
# num_distractor_snakes = K // distractor_length. 256 px keeps the default padding and seed distance.
LRA_SETTINGS = {
    32: dict(padding=1, antialias=2, margins=(1,), paddle_length=2, paddle_thickness=0.5,
             marker_radius=1.5, seed_distance=7, continuity=1.0, snake_contrasts=(2.0,),
             paddle_contrasts=(0.75,), K=20),
    64: dict(padding=1, antialias=2, margins=(1,), paddle_thickness=1, marker_radius=2.5,
             seed_distance=12, continuity=1.8, snake_contrasts=(0.8,), K=22),
    128: dict(padding=1, antialias=2, margins=(2, 3), paddle_thickness=1.5, marker_radius=3,
              seed_distance=20, continuity=1.8, snake_contrasts=(0.9,), K=35),
    256: dict(antialias=2, margins=(3,), paddle_thickness=2, marker_radius=5, continuity=1.8,
              snake_contrasts=(1.0,), K=30),
}


def lra_params(resolution: int, difficulty: str = "curv_contour_length_14",
               distractors: str = "per-difficulty") -> SnakeParams:
    """The LRA generator setting for a resolution and difficulty folder name (or easy/intermediate/hard)."""
    if resolution not in LRA_SETTINGS:
        raise UserError(f"pathfinder resolution {resolution}: expected one of {sorted(LRA_SETTINGS)}")
    folder = DIFFICULTIES.get(difficulty, difficulty)
    if folder not in CONTOUR_LENGTH:
        raise UserError(f"pathfinder difficulty {difficulty!r}: expected one of "
                        f"{', '.join(list(DIFFICULTIES) + list(CONTOUR_LENGTH))}")
    if distractors not in ("per-difficulty", "baseline"):
        raise UserError(f"pathfinder option distractors={distractors!r}: expected per-difficulty or baseline")
    setting = dict(LRA_SETTINGS[resolution])
    k = setting.pop("K")
    contour = CONTOUR_LENGTH[folder]
    basis = contour if distractors == "per-difficulty" else CONTOUR_LENGTH["curv_baseline"]
    return SnakeParams(window=resolution, contour_length=contour, distractor_length=contour // 3,
                       num_distractor_snakes=k // (basis // 3), **setting)


# -- scipy.misc / OpenCV emulation ------------------------------------------------------------------
def bytescale(a: np.ndarray) -> np.ndarray:
    """scipy.misc.bytescale: min-max scale to 0..255 with +0.5 truncation; uint8 passes unchanged."""
    if a.dtype == np.uint8:
        return a
    lo, hi = float(a.min()), float(a.max())
    span = (hi - lo) or 1.0
    return (((a - lo) * (255.0 / span)).clip(0, 255) + 0.5).astype(np.uint8)


def imresize(a: np.ndarray, size: int) -> np.ndarray:
    """scipy.misc.imresize(a, (size, size), interp='lanczos'): bytescale, then PIL Lanczos in mode L."""
    return np.asarray(Image.fromarray(bytescale(a)).resize((size, size), LANCZOS))


@functools.lru_cache(maxsize=None)
def disk(radius: int) -> np.ndarray:
    """Binary disk of a radius (the dilation structuring element), (2r+1, 2r+1) uint8."""
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def dilate(im: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Grey dilation like cv2.dilate: out[y, x] = max over kernel taps of im[y+i-ay, x+j-ax]."""
    kh, kw = kernel.shape
    h, w = im.shape
    padded = np.zeros((h + kh - 1, w + kw - 1), dtype=np.float64)  # images are >= 0: 0 = no effect
    padded[kh // 2:kh // 2 + h, kw // 2:kw // 2 + w] = im
    out = np.zeros((h, w), dtype=np.float64)
    for i, j in zip(*np.nonzero(kernel)):
        np.maximum(out, padded[i:i + h, j:j + w], out=out)
    return out


def translate(coord, orientation: float, dist: float) -> tuple[int, int]:
    """Move (y, x) by `dist` along `orientation` (radians), rounding up as upstream does."""
    return (int(math.ceil(coord[0] + dist * math.sin(orientation))),
            int(math.ceil(coord[1] + dist * math.cos(orientation))))


def flip(orientation: float) -> float:
    return orientation + math.pi if orientation < 0 else orientation - math.pi


# -- paddles ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=65536)
def paddle_patch(orientation: float, length: int, thickness: float, margin: int, aa: int):
    """A paddle drawn from the patch centre: (line in [0,1], mask in [0,1], mask as uint8), each (s, s).

    Drawn as a `aa`-times larger PIL line, Lanczos-downsampled; the mask is the large line dilated by a
    disk of radius margin*aa, downsampled the same way (upstream `draw_line_n_mask`).
    """
    if round(thickness * aa) != thickness * aa:
        raise ValueError(f"paddle thickness {thickness} x antialias {aa} is not an integer")
    half = length + int(math.ceil(thickness)) + margin
    big, centre = half * 2 * aa + 1, half * aa
    head = translate((centre, centre), orientation, length * aa)
    canvas = Image.new("F", (big, big), 0.0)
    ImageDraw.Draw(canvas).line([(centre, centre), (head[1], head[0])], fill=255.0,
                                width=int(round(thickness * aa)))
    blown = np.asarray(canvas)  # (big, big) float32, 0 or 255
    line = imresize(blown, 2 * half + 1).astype(np.float64) / 255
    mask_u8 = imresize(dilate(blown, disk(margin * aa)).astype(np.uint8), 2 * half + 1)
    return line, mask_u8.astype(np.float64) / 255, mask_u8


@dataclass
class Paddle:
    """A paddle placed in the image: its rows/cols window and the matching patch windows."""

    rows: slice
    cols: slice
    line: np.ndarray  # (h, w) float, already times contrast
    mask: np.ndarray  # (h, w) float in [0, 1]


def place_paddle(shape, start, orientation: float, p: SnakeParams, margin: int, contrast: float = 1.0) -> Paddle:
    """The paddle whose patch is centred on `start` (clipped to the image), like `draw_line_n_mask`."""
    line, mask, _ = paddle_patch(orientation, p.paddle_length, p.paddle_thickness, margin, p.antialias)
    half = line.shape[0] // 2
    r0, r1 = max(start[0] - half, 0), min(start[0] + half, shape[0] - 1)
    c0, c1 = max(start[1] - half, 0), min(start[1] + half, shape[1] - 1)
    pr0, pc0 = r0 - (start[0] - half), c0 - (start[1] - half)
    pr1, pc1 = pr0 + max(r1 - r0 + 1, 0), pc0 + max(c1 - c0 + 1, 0)
    patch = line[pr0:pr1, pc0:pc1]
    if contrast != 1.0:
        patch = patch * contrast
    return Paddle(slice(r0, r0 + patch.shape[0]), slice(c0, c0 + patch.shape[1]), patch, mask[pr0:pr1, pc0:pc1])


def draw(image: np.ndarray, paddle: Paddle) -> None:
    view = image[paddle.rows, paddle.cols]
    np.maximum(view, paddle.line, out=view)


def add_mask(mask: np.ndarray, paddle: Paddle | None) -> None:
    if paddle is not None:
        view = mask[paddle.rows, paddle.cols]
        np.maximum(view, paddle.mask, out=view)


def collides(mask: np.ndarray, paddle: Paddle) -> bool:
    """Upstream accepts a paddle when max(mask + paddle_mask) < 1.8 (mask <= 1 outside the window)."""
    if paddle.mask.size == 0:
        return False
    return float((mask[paddle.rows, paddle.cols] + paddle.mask).max()) >= 1.8


@functools.lru_cache(maxsize=8192)
def seed_kernel(orientation: float, p: SnakeParams, margin: int) -> np.ndarray:
    """Head-centric paddle-shaped dilation kernel used to seed snakes (only pixels at 255 count)."""
    size = (p.paddle_length + margin) * 2 + 1
    head = p.paddle_length + margin + 1
    canvas = np.zeros((size, size), dtype=np.uint8)
    _, _, mask_u8 = paddle_patch(orientation, p.paddle_length, p.paddle_thickness, margin, p.antialias)
    half = mask_u8.shape[0] // 2
    for y in range(size):
        for x in range(size):
            py, px = y - head + half, x - head + half
            if 0 <= py < mask_u8.shape[0] and 0 <= px < mask_u8.shape[1]:
                canvas[y, x] = mask_u8[py, px]
    return (canvas == 255).astype(np.uint8)


def available(mask: np.ndarray) -> np.ndarray:
    """Free pixels: upstream keeps coordinates where ceil(mask - 0.3) == 0, i.e. mask <= 0.3."""
    return np.flatnonzero(mask.ravel() <= 0.3)


def out_of_bounds(coord, shape) -> bool:
    return not (0 <= coord[0] < shape[0] and 0 <= coord[1] < shape[1])


# -- snakes ----------------------------------------------------------------------------------------
@dataclass
class SnakeState:
    pivot: tuple
    orientation: float
    last_mask: Paddle | None  # the newest paddle's exclusion mask, added to the global mask one step late
    tip: tuple  # newest head (terminal tip)


def seed_paddle(rng, image, mask, p: SnakeParams, margin: int, contrast: float, band: int,
                stop_with_availability: float | None = None):
    """Place a first paddle on a free pixel (upstream `seed_snake`; `band` px of border are blocked).

    Returns (tail, SnakeState) or None.
    """
    shape = mask.shape
    if stop_with_availability is not None and available(mask).size / mask.size < stop_with_availability:
        return None
    for _ in range(p.max_paddle_retrial + 1):
        theta = int(rng.integers(-180, 180)) * math.pi / 180
        lined = mask.copy()
        lined[:band, :] = 1
        lined[shape[0] - band:, :] = 1
        lined[:, :band] = 1
        lined[:, shape[1] - band:] = 1
        free = available(dilate(lined, seed_kernel(theta, p, margin)))
        if free.size == 0:
            return None
        tail = divmod(int(free[rng.integers(free.size)]), shape[1])
        head = translate(tail, theta, p.paddle_length)
        pivot = translate(head, flip(theta), p.paddle_length + margin)
        if out_of_bounds(head, shape) or out_of_bounds(pivot, shape):
            continue
        paddle = place_paddle(shape, tail, theta, p, margin, contrast)
        draw(image, paddle)
        return tail, SnakeState(pivot, theta, paddle, head)
    return None


@functools.lru_cache(maxsize=None)
def circle_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets of the pixels on a circle, sampled at one-pixel arc steps, and their angles.

    Upstream samples pivot + radius*(sin, cos), truncates to int and deduplicates. For in-bounds
    points truncation is flooring and the pivot is an integer, so the cells are pivot + floor(offset):
    the deduplicated offsets (sorted as np.unique sorts) and their angles can be computed once.
    """
    step_deg = 360.0 / (2 * radius * math.pi)  # one pixel of arc
    angles = np.arange(0, 360, step_deg) * np.pi / 180
    offsets = np.unique(np.floor(np.stack([radius * np.sin(angles), radius * np.cos(angles)], 1)).astype(int),
                        axis=0)  # (k, 2) sorted like upstream's np.unique of the coordinates
    return offsets, np.arctan2(offsets[:, 0], offsets[:, 1])  # angles in -pi..pi


@functools.lru_cache(maxsize=None)
def disk_offsets(radius: int) -> np.ndarray:
    """(t, 2) offsets of the taps of disk(radius) relative to its centre."""
    return np.argwhere(disk(radius)) - radius


def dilated_at(mask: np.ndarray, cells: np.ndarray, radius: int) -> np.ndarray:
    """dilate(mask, disk(radius)) evaluated only at in-bounds `cells` (k, 2); outside taps count as 0."""
    h, w = mask.shape
    padded = np.zeros((h + 2 * radius, w + 2 * radius))  # zero border: taps outside add nothing
    padded[radius:radius + h, radius:radius + w] = mask
    taps = cells[:, None, :] + (disk_offsets(radius) + radius)[None, :, :]  # (k, t, 2) in padded coords
    return padded[taps[..., 0], taps[..., 1]].max(axis=1)


def candidate_heads(pivot, last_orientation: float, radius: int, mask: np.ndarray, margin: int,
                    continuity: float):
    """Pixels on a circle around the pivot and their sampling CDF (upstream `get_coords_cmf`).

    Weight = max(cos(min(|turn| * continuity, pi/2)), 0)^2 * (1 - mask dilated by disk(margin)).
    """
    h, w = mask.shape
    offsets, orient = circle_offsets(radius)
    coords = offsets + np.asarray(pivot)
    inside = (coords[:, 0] >= 0) & (coords[:, 0] < h) & (coords[:, 1] >= 0) & (coords[:, 1] < w)
    if not inside.any():
        return None
    coords, orient = coords[inside], orient[inside]
    turn = np.abs(orient - last_orientation)
    turn = np.minimum(np.minimum(turn, 2 * np.pi - turn) * continuity, 0.5 * np.pi)
    weight = np.maximum(np.cos(turn), 0) ** 2 * (1 - dilated_at(mask, coords, margin))
    total = weight.sum()
    if total < 1e-4:
        return None
    return coords, orient, np.cumsum(weight / total)


def extend(rng, state: SnakeState, image, mask, p: SnakeParams, margin: int, contrast: float) -> bool:
    """Add one paddle to a snake (upstream `extend_snake`); updates image, mask and state in place."""
    pivot = translate(state.pivot, state.orientation, p.paddle_length + 2 * margin)
    found = candidate_heads(pivot, state.orientation, p.paddle_length + margin, mask, margin, p.continuity)
    if found is None:
        return False
    coords, orient, cdf = found
    for _ in range(p.max_paddle_retrial + 1):
        k = int(np.argmax(cdf - rng.random() > 0))
        head = (int(coords[k, 0]), int(coords[k, 1]))
        paddle = place_paddle(mask.shape, head, flip(float(orient[k])), p, margin, contrast)
        if not collides(mask, paddle):
            draw(image, paddle)
            add_mask(mask, state.last_mask)  # the previous paddle only now blocks space
            state.pivot, state.orientation, state.last_mask, state.tip = pivot, float(orient[k]), paddle, head
            return True
    return False


def pick(rng, options: tuple):
    return options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]


def two_snakes(rng, p: SnakeParams, margin: int):
    """The two target snakes (upstream `two_snakes` + `initialize_two_seeds`), or None on failure.

    Returns (image0, image1, mask, origin_tips, terminal_tips).
    """
    shape = (p.window, p.window)
    mus = list(p.snake_contrasts) * 2
    rng.shuffle(mus)
    mask = np.zeros(shape)
    mask[:p.padding, :] = 1
    mask[-p.padding:, :] = 1
    mask[:, :p.padding] = 1
    mask[:, -p.padding:] = 1
    images = [np.zeros(shape), np.zeros(shape)]
    first = seed_paddle(rng, images[0], mask, p, margin, pick(rng, p.paddle_contrasts) * mus[0],
                        band=2 * p.seed_distance)
    if first is None:
        return None
    tail1, state1 = first
    # The second tail sits seed_distance px from the first, at a random angle; only bounds are checked.
    contrast = pick(rng, p.paddle_contrasts) * mus[1]
    for _ in range(p.max_paddle_retrial + 1):
        theta = int(rng.integers(-180, 180)) * math.pi / 180
        around = int(rng.integers(0, 360)) * math.pi / 180
        tail2 = (int(np.round(tail1[0] + p.seed_distance * math.sin(around))),
                 int(np.round(tail1[1] + p.seed_distance * math.cos(around))))
        head2 = translate(tail2, theta, p.paddle_length)
        pivot2 = translate(head2, flip(theta), p.paddle_length + margin)
        if not (out_of_bounds(head2, shape) or out_of_bounds(pivot2, shape)):
            break
    else:
        return None
    paddle2 = place_paddle(shape, tail2, theta, p, margin, contrast)
    draw(images[1], paddle2)
    states = [state1, SnakeState(pivot2, theta, paddle2, head2)]
    for _ in range(p.contour_length - 1):
        contrast = p.paddle_contrasts[int(rng.integers(len(p.paddle_contrasts)))]
        for s in (0, 1):
            if not extend(rng, states[s], images[s], mask, p, margin, contrast * mus[s]):
                return None
    add_mask(mask, states[1].last_mask)  # upstream adds only the second snake's last paddle
    return images[0], images[1], mask, [tail1, tail2], [states[0].tip, states[1].tip]


def many_snakes(rng, image, mask, p: SnakeParams, margin: int, num_snakes: int, num_segments: int,
                max_snake_trial: int, stop_with_availability: float = 0.01) -> None:
    """Distractor snakes (upstream `make_many_snakes` with allow_incomplete=True), in place."""
    for _ in range(num_snakes):
        if available(mask).size / mask.size < stop_with_availability:
            return  # every further seed would fail: upstream stops drawing here too
        for _ in range(max_snake_trial + 1):
            trial_image, trial_mask = image.copy(), mask.copy()
            seeded = seed_paddle(rng, trial_image, trial_mask, p, margin, pick(rng, p.snake_contrasts),
                                 band=1, stop_with_availability=stop_with_availability)
            if seeded is None:
                continue
            _, state = seeded
            if all(extend(rng, state, trial_image, trial_mask, p, margin, pick(rng, p.snake_contrasts))
                   for _ in range(num_segments - 1)):
                add_mask(trial_mask, state.last_mask)
                image[...] = trial_image
                mask[...] = trial_mask
                break


def marker(window: int, coord, radius: float, aa: int) -> np.ndarray:
    """A disk drawn at `aa`x resolution and Lanczos-downsampled (upstream `draw_circle`), uint8."""
    y, x = np.ogrid[-coord[0] * aa:(window - coord[0]) * aa, -coord[1] * aa:(window - coord[1]) * aa]
    big = ((x * x + y * y) <= (radius * aa) ** 2).astype(np.float64)
    return imresize(big, window)


@dataclass
class Sample:
    """One rendered image and how it was made (the geometry is for tests and inspection)."""

    pixels: np.ndarray  # (window, window) uint8, brightest pixel 255
    label: int  # 1: both markers on one snake
    margin: int  # paddle margin drawn for this image
    markers: tuple  # ((y, x) of the origin marker, (y, x) of the terminal marker)
    snakes: tuple  # (snake index of the origin marker, snake index of the terminal marker)


def render(rng, p: SnakeParams) -> Sample:
    """One image (upstream `snakes2.from_wrapper`, one loop iteration)."""
    label = int(rng.integers(0, 2))
    margin = p.margins[int(rng.integers(len(p.margins)))]
    while True:  # upstream retries the two target snakes until both reach full length
        snakes = two_snakes(rng, p, margin)
        if snakes is not None:
            break
    image0, image1, mask, origins, terminals = snakes
    image = np.maximum(image0, image1)
    if p.num_distractor_snakes > 0:
        many_snakes(rng, image, mask, p, margin, p.num_distractor_snakes, p.distractor_length,
                    p.max_distractor_contour_retrial)
    if p.use_single_paddles:
        total = int(150 / ((7.5 + 13 * margin + 4 * margin * margin) / 123.5))
        singles = total - 2 * p.contour_length - p.num_distractor_snakes * p.distractor_length
        many_snakes(rng, image, mask, p, margin, singles, 1, p.max_paddle_retrial)
    origin = int(rng.integers(0, 2))
    terminal = origin if label == 1 else 1 - origin
    markers = np.maximum(marker(p.window, origins[origin], p.marker_radius, p.antialias),
                         marker(p.window, terminals[terminal], p.marker_radius, p.antialias))
    pixels = bytescale(np.maximum(image, markers.astype(np.float64) / 255))  # scipy imsave
    return Sample(pixels, label, margin, (tuple(origins[origin]), tuple(terminals[terminal])), (origin, terminal))


# -- writing a dataset -----------------------------------------------------------------------------
def metadata_line(fields) -> str:
    return " ".join(str(f) for f in fields)


def generate_batch(job: tuple) -> dict:
    """Write one batch: `imgs/<b>/sample_<i>.png` and `metadata/<b>.npy`. Runs in a worker process."""
    out_dir, batch_id, n_images, seed, params, metadata_format = job
    out_dir = Path(out_dir)
    rng = np.random.default_rng([seed, batch_id])
    sub = f"imgs/{batch_id}"
    (out_dir / sub).mkdir(parents=True, exist_ok=True)
    rows, labels = [], []
    for i in range(n_images):
        sample = render(rng, params)
        name = f"sample_{i}.png"
        Image.fromarray(sample.pixels).save(out_dir / sub / name)
        rows.append([sub, name, i, sample.label] + params.metadata_fields(sample.margin))
        labels.append(sample.label)
    meta_path = out_dir / "metadata" / f"{batch_id}.npy"
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    if metadata_format == "npy":  # what upstream np.save writes: an (N, 11) unicode array
        with open(meta_path, "wb") as f:
            np.save(f, np.array([[str(v) for v in row] for row in rows]))
    else:  # the released form: plain text, one line per image
        meta_path.write_text("".join(metadata_line(row) + "\n" for row in rows))
    return dict(batch=batch_id, n=n_images, positives=sum(labels))


def _worker_init() -> None:
    """Workers die quietly on SIGTERM and leave Ctrl-C to the parent (which may have its own handlers)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def batch_sizes(n: int, batch_size: int | None = None) -> list[int]:
    """How `n` images are cut into batches: depends on n only, so output does not depend on workers."""
    size = batch_size or max(1, min(1000, math.ceil(n / 16)))
    return [min(size, n - start) for start in range(0, n, size)]


def generate_dataset(out_dir: str | Path, n: int, seed: int, params: SnakeParams, workers: int = 1,
                     metadata_format: str = "text", batch_size: int | None = None,
                     progress: Callable[[int], None] | None = None) -> dict:
    """Generate `n` images into `out_dir` (a `pathfinder{R}/<difficulty>` folder) with `manifest.json`.

    One batch per worker task (multiprocessing); `progress(images)` is called as batches finish.
    Returns the manifest dict.
    """
    out_dir = Path(out_dir)
    if n < 1:
        raise UserError(f"--n {n}: expected at least 1 image")
    if metadata_format not in ("text", "npy"):
        raise UserError(f"metadata format {metadata_format!r}: expected text or npy")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out_dir), b, size, seed, params, metadata_format)
            for b, size in enumerate(batch_sizes(n, batch_size))]
    started = time.perf_counter()
    workers = max(1, min(int(workers), len(jobs)))
    results = []
    if workers == 1:
        done = (generate_batch(job) for job in jobs)
        for r in done:
            results.append(r)
            if progress is not None:
                progress(r["n"])
    else:
        # fork where the platform has it: spawn/forkserver re-import the caller's __main__, which
        # breaks scripts without a main guard; workers only use numpy and PIL, never torch threads.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(workers, initializer=_worker_init) as pool:
            for r in pool.imap_unordered(generate_batch, jobs):
                results.append(r)
                if progress is not None:
                    progress(r["n"])
            pool.close()
            pool.join()
    elapsed = time.perf_counter() - started
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")
                   if p.is_file() and p.name != "manifest.json")
    manifest = dict(
        generator="harness_tasks.pathfinder (re-implementation of drewlinsley/pathfinder snakes2, LRA parameters)",
        seed=seed, n=n, params=asdict(params), metadata_format=metadata_format,
        counts=dict(images=sum(r["n"] for r in results), positives=sum(r["positives"] for r in results),
                    batches=len(results)),
        seconds=round(elapsed, 3), workers=workers,
        files={f: sha256_file(out_dir / f) for f in files},
    )
    write_manifest(out_dir, manifest)
    return manifest

