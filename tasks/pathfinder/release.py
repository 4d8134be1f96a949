"""Reading the released Pathfinder folders (lra.md §2, §6), and checking them (`data check`).

Layout: `pathfinder{32,64,128,256}/<difficulty>/{imgs,metadata}` as in `lra_release` (also under
lra_release/ and lra_release/lra_release/), metadata as plain text (the release) or binary `.npy`
string arrays (what the upstream generator writes), one line per image: subdir, filename, index,
label and seven generator settings. Zero-byte PNGs (the known
`pathfinder32/curv_baseline/imgs/0/sample_172.png`) are skipped with a warning; a PNG that does not
decode is an error naming the file.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from harness.errors import UserError
from harness_tasks.common import first_folder, release_folders
from harness_tasks.datafiles import Problems, expected_count, read_manifest, verify_checksums

log = logging.getLogger(__name__)

# The one known damaged file of the release (S4 and Mega blacklist it; LRA drops empty images).
BLACKLIST = {("pathfinder32", "curv_baseline", "imgs/0/sample_172.png")}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"
IMAGES_PER_DIFFICULTY = 200000  # in each released difficulty folder


def parse_metadata(path: Path) -> list[list[str]]:
    """Rows of 11 fields from a metadata file, plain text (the release) or binary .npy (upstream)."""
    raw = path.read_bytes()
    if raw.startswith(NPY_MAGIC):
        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError as exc:
            raise UserError(f"{path}: binary .npy metadata that needs pickle or is damaged ({exc}); "
                            f"expected an (N, 11) string array", exit_code=1)
        if array.ndim == 1:  # a single row saved without the batch axis
            array = array[None, :]
        rows = [[str(v) for v in row] for row in array]
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path}: metadata is neither UTF-8 text nor a .npy array", exit_code=1)
        rows = [line.split() for line in text.split("\n") if line.strip()]
    for line_no, row in enumerate(rows, start=1):
        if len(row) != 11:
            raise UserError(f"{path}: row {line_no} has {len(row)} fields, expected 11 "
                            f"(subdir filename index label continuity contour_length ...)", exit_code=1)
        if row[3] not in ("0", "1"):
            raise UserError(f"{path}: row {line_no}: label (field 3) is {row[3]!r}, expected 0 or 1",
                            exit_code=1)
    return rows


def metadata_files(root: Path) -> list[Path]:
    """`metadata/*.npy` sorted by integer batch name (not by os.listdir order)."""
    files = [p for p in (root / "metadata").glob("*.npy") if p.is_file()]
    return sorted(files, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))


def list_examples(root: Path, warn: bool = True) -> tuple[list[str], list[int], list[str]]:
    """(relative image paths, labels, skipped) of a difficulty folder, in sorted metadata order."""
    files = metadata_files(root)
    if not files:
        raise UserError(f"{root}: no metadata/*.npy files; expected pathfinder{{R}}/<difficulty>/"
                        f"metadata/<batch>.npy next to imgs/", exit_code=1)
    resolution, difficulty = root.parent.name, root.name
    paths, labels, skipped = [], [], []
    for meta in files:
        for row in parse_metadata(meta):
            rel = f"{row[0]}/{row[1]}"
            image = root / rel
            if (resolution, difficulty, rel) in BLACKLIST or (image.is_file() and image.stat().st_size == 0):
                skipped.append(rel)
                continue
            paths.append(rel)
            labels.append(int(row[3]))
    if skipped and warn:
        shown = ", ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        log.warning(f"{root}: skipped {len(skipped)} empty or blacklisted image(s): {shown}")
    return paths, labels, skipped


def load_image(path: Path, resolution: int) -> np.ndarray:
    """Decode one PNG to a (R, R) uint8 array; a clear error names a missing or corrupt file."""
    if not path.is_file():
        raise UserError(f"{path}: image listed in the metadata is missing", exit_code=1)
    try:
        with Image.open(path) as im:
            im.load()
            gray = np.asarray(im.convert("L") if im.mode != "L" else im)
    except Exception as exc:  # PIL raises several types for damaged files
        raise UserError(f"{path}: corrupt or unreadable PNG ({type(exc).__name__}: {exc}); "
                        f"replace the file or regenerate the data", exit_code=1)
    if gray.shape != (resolution, resolution):
        raise UserError(f"{path}: image is {gray.shape[1]}x{gray.shape[0]}, expected "
                        f"{resolution}x{resolution}", exit_code=1)
    return gray


def find_difficulty_dir(data_dir: Path, resolution: int, folder: str) -> Path | None:
    """The `pathfinder{R}/<folder>` directory under the usual layouts, or None."""
    candidates = release_folders(data_dir, f"pathfinder{resolution}/{folder}") + [data_dir / folder]
    if data_dir.name == folder:
        candidates.insert(0, data_dir)
    return first_folder(candidates, lambda c: (c / "metadata").is_dir())


def check_image(path: Path, resolution: int, listed_in: str, problems: Problems) -> None:
    """An image listed in metadata file `listed_in`: present, non-empty, a PNG whose chunks verify,
    of the expected size."""
    if not path.is_file():
        problems.add(f"{path}: listed in {listed_in} but missing", "missing image")
        return
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        problems.add(f"{path}: empty image file", "empty image")
        return
    if head != PNG_MAGIC:
        problems.add(f"{path}: not a PNG file", "not png")
        return
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()  # chunk structure and checksums, without decoding pixels
    except Exception as exc:  # PIL raises several types for damaged files
        problems.add(f"{path}: corrupt PNG ({type(exc).__name__}: {exc})", "corrupt png")
        return
    if size != (resolution, resolution):
        problems.add(f"{path}: {size[0]}x{size[1]} pixels, expected {resolution}x{resolution}",
                     "image size", minor=True)


def check_release(data_dir: Path, resolution: int, folder: str) -> list[str]:
    """Problems of one difficulty folder: metadata readable, every listed image sound (the blacklisted
    one excepted), the count against manifest.json or the release, and the manifest's checksums."""
    problems = Problems()
    root = find_difficulty_dir(data_dir, resolution, folder)
    if root is None:
        problems.add(f"{data_dir}: no pathfinder{resolution}/{folder}/metadata/ found (also looked in "
                     f"lra_release/ and lra_release/lra_release/)")
        return problems.result()
    manifest = read_manifest(root, problems)
    if not (root / "imgs").is_dir():
        problems.add(f"{root / 'imgs'}: missing folder")
    metas = metadata_files(root)
    if not metas:
        problems.add(f"{root / 'metadata'}: no <batch>.npy metadata files")
        return problems.result()
    listed = 0
    for meta in metas:
        if meta.stat().st_size == 0:
            problems.add(f"{meta}: empty metadata file")
            continue
        try:
            rows = parse_metadata(meta)
        except UserError as exc:
            problems.add(str(exc))
            continue
        for row in rows:
            listed += 1
            rel = f"{row[0]}/{row[1]}"
            if (f"pathfinder{resolution}", root.name, rel) not in BLACKLIST:
                check_image(root / rel, resolution, meta.name, problems)
    want, where = expected_count(manifest, "images", IMAGES_PER_DIFFICULTY)
    if listed != want:
        problems.add(f"{root}: metadata lists {listed} images, {where} has {want}", minor=True)
    verify_checksums(root, manifest, problems)
    return problems.result()

