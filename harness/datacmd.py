"""`python -m harness data check|generate`: inspect a user's data folder, or regenerate data offline.

    data check --task T --data-dir D
        Looks for task T's files under D in the layouts the task readers accept (lra.md §2, §9) and
        lists every problem: missing or empty files, unreadable rows, wrong counts, images that are
        missing, empty, not PNG or damaged, checksum mismatches against a `manifest.json`. Counts are checked
        against the `manifest.json` written by `data generate` when there is one, else against the
        official release. Problems are listed on stdout, the first one also as a single `error:` line
        on stderr; exit status 0 when nothing is wrong, 1 otherwise. The known empty
        `pathfinder32/curv_baseline/imgs/0/sample_172.png` is not a problem (readers skip it).

    data generate --task listops|pathfinder|pathx --out D [--n N] [--seed S] [--workers W]
        Writes the task's data in the release layout (`D/listops-1000/basic_*.tsv`,
        `D/pathfinder{32,128}/<difficulty>/{imgs,metadata}`) and, in that folder, `manifest.json`
        with the seed, generator parameters, counts and the sha256 of every file. `--data-dir D`
        then makes the tasks read it. Pathfinder runs one batch per worker process; the output is
        the same for any number of workers.

Python API: `check(task, data_dir) -> list[str]`, `generate(task, out_dir, n, seed, workers) -> dict`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from harness.errors import UserError

MAX_LISTED = 10  # problems of one kind listed individually before a summary line
CHECKABLE = ("listops", "text", "retrieval", "image", "image_tokens", "pathfinder", "pathx")
GENERATABLE = ("listops", "pathfinder", "pathx")
PATHFINDER_RESOLUTION = {"pathfinder": 32, "pathx": 128}
OFFICIAL = {
    "listops": {"basic_train.tsv": 96000, "basic_val.tsv": 2000, "basic_test.tsv": 2000},
    "retrieval": {"new_aan_pairs.train.tsv": 147086, "new_aan_pairs.eval.tsv": 18090,
                  "new_aan_pairs.test.tsv": 17437},
    "aclimdb": 12500,  # reviews per class and part
    "imdb_export": 25000,  # reviews per part
    "cifar": 10000,  # images per batch file
    "pathfinder": 200000,  # images per difficulty
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Problems:
    """Collects problems, listing the first few of each kind and counting the rest.

    `minor` problems (counts and sizes that differ from the release) are listed after the others,
    so the first problem is the one that breaks reading (missing, empty, corrupt).
    """

    def __init__(self):
        self.items: list[tuple[bool, str]] = []
        self.hidden: dict[str, int] = {}
        self.shown: dict[str, int] = {}

    def add(self, message: str, kind: str | None = None, minor: bool = False) -> None:
        kind = kind or message
        if self.shown.get(kind, 0) < MAX_LISTED:
            self.shown[kind] = self.shown.get(kind, 0) + 1
            self.items.append((minor, message))
        else:
            self.hidden[kind] = self.hidden.get(kind, 0) + 1

    def readable(self, path: Path) -> bool:
        """True for a non-empty file; otherwise records it as missing or empty."""
        if not path.is_file():
            self.add(f"{path}: missing")
            return False
        if path.stat().st_size == 0:
            self.add(f"{path}: empty file")
            return False
        return True

    def result(self) -> list[str]:
        ordered = [m for minor, m in self.items if not minor] + [m for minor, m in self.items if minor]
        return ordered + [f"... and {n} more problem(s) of the kind: {k}" for k, n in self.hidden.items()]


def read_manifest(folder: Path, problems: Problems) -> dict | None:
    """The folder's manifest.json, or None when there is none or it is damaged (a problem, and the
    counts are then checked against the official release)."""
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except OSError as exc:
        problems.add(f"{path}: cannot be read ({exc.strerror or exc})")
        return None
    except ValueError as exc:
        problems.add(f"{path}: not valid JSON ({exc})")
        return None
    if not isinstance(manifest, dict):
        problems.add(f"{path}: damaged, expected a JSON object; regenerate the data or delete manifest.json")
        return None
    counts, files = manifest.get("counts", {}), manifest.get("files", {})
    if not (isinstance(counts, dict) and all(type(v) is int for v in counts.values())  # bool is no count
            and isinstance(files, dict) and all(isinstance(v, str) for v in files.values())):
        problems.add(f"{path}: damaged, expected 'counts' of whole numbers and 'files' mapping each file "
                     f"to its sha256; regenerate the data or delete manifest.json")
        return None
    return manifest


def verify_checksums(folder: Path, manifest: dict, problems: Problems) -> None:
    for rel, digest in sorted(manifest.get("files", {}).items()):
        path = folder / rel
        if not path.is_file():
            problems.add(f"{path}: listed in manifest.json but missing", "manifest file missing")
        elif sha256_file(path) != digest:
            problems.add(f"{path}: sha256 differs from manifest.json (file changed or damaged)", "checksum")


def expected_count(manifest: dict | None, key: str, official: int) -> tuple[int, str]:
    if manifest is not None and key in manifest.get("counts", {}):
        return int(manifest["counts"][key]), "manifest.json"
    return official, "the official release"


# -- per-task checks -------------------------------------------------------------------------------
def check_listops(data_dir: Path, problems: Problems) -> None:
    candidates = [data_dir, data_dir / "listops-1000", data_dir / "lra_release" / "listops-1000",
                  data_dir / "lra_release" / "lra_release" / "listops-1000"]
    folder = next((c for c in candidates if any((c / f).exists() for f in OFFICIAL["listops"])), None)
    if folder is None:
        problems.add(f"{data_dir}: ListOps files basic_train.tsv, basic_val.tsv, basic_test.tsv not found "
                     f"(looked in ., listops-1000/, lra_release/listops-1000/, lra_release/lra_release/listops-1000/)")
        return
    manifest = read_manifest(folder, problems)
    for name, official in OFFICIAL["listops"].items():
        path = folder / name
        if not problems.readable(path):
            continue
        rows = 0
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["Source", "Target"]:
                problems.add(f"{path}: first line should be the header 'Source<TAB>Target', found {header!r}")
            for line_no, row in enumerate(reader, start=2):
                rows += 1
                if len(row) < 2:
                    problems.add(f"{path}:{line_no}: expected 2 tab-separated columns, found {len(row)}", "listops columns")
                    continue
                try:
                    ok = 0 <= int(float(row[1])) <= 9
                except ValueError:
                    ok = False
                if not ok:
                    problems.add(f"{path}:{line_no}: Target {row[1]!r} is not a digit 0-9", "listops target")
        want, where = expected_count(manifest, name.split("_")[1].split(".")[0], official)
        if rows != want:
            problems.add(f"{path}: {rows} examples, {where} has {want}", minor=True)
    if manifest is not None:
        verify_checksums(folder, manifest, problems)


def check_text(data_dir: Path, problems: Problems) -> None:
    from harness_tasks.text import find_source
    found = find_source(data_dir)
    if found is None:
        problems.add(f"{data_dir}: no aclImdb/{{train,test}}/{{pos,neg}}/*.txt and no imdb/{{train,test}}."
                     f"{{jsonl,csv}} export found")
        return
    kind, root = found
    if kind == "aclimdb":
        for part in ("train", "test"):
            for cls in ("neg", "pos"):
                folder = root / part / cls
                if not folder.is_dir():
                    problems.add(f"{folder}: missing folder")
                    continue
                files = list(folder.glob("*.txt"))
                for f in files:
                    if f.stat().st_size == 0:
                        problems.add(f"{f}: empty review file", "empty review")
                if len(files) != OFFICIAL["aclimdb"]:
                    problems.add(f"{folder}: {len(files)} reviews, the Stanford release has {OFFICIAL['aclimdb']}",
                                 minor=True)
        return
    from harness_tasks.text import read_export
    for part in ("train", "test"):
        path = root / f"{part}.{kind}"
        if not problems.readable(path):
            continue
        try:
            docs, _ = read_export(kind, path)
        except UserError as exc:
            problems.add(str(exc))
            continue
        empty = sum(1 for d in docs if not d)
        if empty:
            problems.add(f"{path}: {empty} empty review(s)")
        if len(docs) != OFFICIAL["imdb_export"]:
            problems.add(f"{path}: {len(docs)} reviews, IMDB has {OFFICIAL['imdb_export']}", minor=True)


def check_retrieval(data_dir: Path, problems: Problems) -> None:
    from harness_tasks.retrieval import find_tsv_dir
    folder = find_tsv_dir(data_dir)
    if folder is None:
        problems.add(f"{data_dir}: no tsv_data/new_aan_pairs.{{train,eval,test}}.tsv found (also looked in "
                     f"lra_release/, lra_release/lra_release/, aan/)")
        return
    for name, official in OFFICIAL["retrieval"].items():
        path = folder / name
        if not problems.readable(path):
            continue
        rows = 0
        with open(path, "rb") as f:
            for line_no, line in enumerate(f, start=1):
                line = line.rstrip(b"\n").rstrip(b"\r")
                if not line:
                    continue
                rows += 1
                fields = line.split(b"\t")
                if len(fields) != 5:
                    problems.add(f"{path}:{line_no}: {len(fields)} tab-separated fields, expected 5 "
                                 f"(label id1 id2 text1 text2)", "aan fields")
                    continue
                try:
                    ok = int(float(fields[0])) in (0, 1)
                except ValueError:
                    ok = False
                if not ok:
                    problems.add(f"{path}:{line_no}: label {fields[0][:20]!r} is not 0 or 1", "aan label")
        if rows != official:
            problems.add(f"{path}: {rows} pairs, the LRA release has {official}", minor=True)


def check_image(data_dir: Path, problems: Problems) -> None:
    from harness_tasks.image import TEST_FILE, TRAIN_FILES, find_cifar_dir, read_cifar_batch
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
        if len(images) != OFFICIAL["cifar"]:
            problems.add(f"{path}: {len(images)} images, a CIFAR-10 batch has {OFFICIAL['cifar']}", minor=True)


def check_pathfinder(task: str, data_dir: Path, problems: Problems, difficulty: str = "hard") -> None:
    from PIL import Image

    from harness_tasks.pathfinder import (BLACKLIST, DIFFICULTIES, PNG_MAGIC, find_difficulty_dir, metadata_files,
                                  parse_metadata)
    resolution = PATHFINDER_RESOLUTION[task]
    folder_name = DIFFICULTIES.get(difficulty, difficulty)
    root = find_difficulty_dir(data_dir, resolution, folder_name)
    if root is None:
        problems.add(f"{data_dir}: no pathfinder{resolution}/{folder_name}/metadata/ found (also looked in "
                     f"lra_release/ and lra_release/lra_release/)")
        return
    manifest = read_manifest(root, problems)
    if not (root / "imgs").is_dir():
        problems.add(f"{root / 'imgs'}: missing folder")
    metas = metadata_files(root)
    if not metas:
        problems.add(f"{root / 'metadata'}: no <batch>.npy metadata files")
        return
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
            path = root / rel
            if (f"pathfinder{resolution}", root.name, rel) in BLACKLIST:
                continue
            if not path.is_file():
                problems.add(f"{path}: listed in {meta.name} but missing", "missing image")
                continue
            with open(path, "rb") as f:
                head = f.read(8)
            if not head:
                problems.add(f"{path}: empty image file", "empty image")
            elif head != PNG_MAGIC:
                problems.add(f"{path}: not a PNG file", "not png")
            else:
                try:
                    with Image.open(path) as im:
                        size = im.size
                        im.verify()  # chunk structure and checksums, without decoding pixels
                except Exception as exc:  # PIL raises several types for damaged files
                    problems.add(f"{path}: corrupt PNG ({type(exc).__name__}: {exc})", "corrupt png")
                    continue
                if size != (resolution, resolution):
                    problems.add(f"{path}: {size[0]}x{size[1]} pixels, expected {resolution}x{resolution}",
                                 "image size", minor=True)
    want, where = expected_count(manifest, "images", OFFICIAL["pathfinder"])
    if listed != want:
        problems.add(f"{root}: metadata lists {listed} images, {where} has {want}", minor=True)
    if manifest is not None:
        verify_checksums(root, manifest, problems)


def check(task_name: str, data_dir: str | Path, difficulty: str = "hard") -> list[str]:
    """Problems found in `data_dir` for a task (empty list = OK)."""
    if task_name not in CHECKABLE:
        raise UserError(f"data check --task {task_name!r}: expected one of {', '.join(CHECKABLE)} "
                        f"(the synthetic tasks generate their data and have nothing to check)")
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise UserError(f"--data-dir {data_dir}: no such directory; give the folder that holds the data "
                        f"(e.g. the unpacked lra_release)", exit_code=1)
    if not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir}: is a file, expected a directory", exit_code=1)
    problems = Problems()
    if task_name == "listops":
        check_listops(data_dir, problems)
    elif task_name == "text":
        check_text(data_dir, problems)
    elif task_name == "retrieval":
        check_retrieval(data_dir, problems)
    elif task_name in ("image", "image_tokens"):
        check_image(data_dir, problems)
    else:
        check_pathfinder(task_name, data_dir, problems, difficulty)
    return problems.result()


# -- generate --------------------------------------------------------------------------------------
@contextlib.contextmanager
def output_folder(folder: Path):
    """Create `folder` for new data, refusing one that already holds some; if the generation inside
    the `with` fails, remove the empty folders it leaves (files stay, to be looked at)."""
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"--out: {folder} already holds data; choose another --out or delete it first",
                        exit_code=1)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out: cannot create {folder} ({exc.strerror}); choose a writable folder", exit_code=1)
    if not os.access(folder, os.W_OK):
        raise UserError(f"--out: {folder} is not writable; choose a writable folder", exit_code=1)
    try:
        yield folder
    except BaseException:
        inside = sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for path in inside + created:
            with contextlib.suppress(OSError):  # a folder holding files stays
                path.rmdir()
        raise


def generate(task_name: str, out_dir: str | Path, n: int | None = None, seed: int = 0, workers: int = 1,
             difficulty: str = "hard", metadata_format: str = "text", progress=None) -> dict:
    """Generate a task's data into `out_dir` (release layout); returns the manifest (plus its path)."""
    if task_name not in GENERATABLE:
        raise UserError(f"data generate --task {task_name!r}: expected one of {', '.join(GENERATABLE)} "
                        f"(text, retrieval and image need real data; the synthetic tasks need no files)")
    if n is not None and int(n) < 1:
        raise UserError(f"--n {n}: expected a positive number of examples")
    if int(workers) < 1:
        raise UserError(f"--workers {workers}: expected at least 1")
    if int(seed) < 0:  # numpy's generators take no negative seed: refuse it before creating --out
        raise UserError(f"--seed {seed}: expected a non-negative integer, e.g. --seed 0")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: is a file, expected a directory", exit_code=1)
    started = time.perf_counter()
    if task_name == "listops":
        from harness_tasks.listops import generate_files
        total = int(n) if n is not None else 100000
        if total < 3:
            raise UserError(f"--n {total}: ListOps needs at least 3 examples (train, val, test)")
        held_out = max(1, round(total * 0.02))  # the release's 96/2/2 proportions
        sizes = dict(train=total - 2 * held_out, val=held_out, test=held_out, min_length=500, max_length=2000)
        folder = out_dir / "listops-1000"
        with output_folder(folder):
            checksums = generate_files(folder, int(seed), sizes)
        manifest = dict(generator="harness_tasks.listops (re-implementation of lra_benchmarks/data/listops.py)",
                        seed=int(seed), params=dict(max_depth=10, max_args=10, min_length=500, max_length=2000),
                        counts={k: sizes[k] for k in ("train", "val", "test")},
                        seconds=round(time.perf_counter() - started, 3), files=checksums)
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    else:
        from harness_tasks.pathfinder import DIFFICULTIES, generate_dataset, lra_params
        resolution = PATHFINDER_RESOLUTION[task_name]
        folder = out_dir / f"pathfinder{resolution}" / DIFFICULTIES.get(difficulty, difficulty)
        params = lra_params(resolution, difficulty)
        with output_folder(folder):
            manifest = generate_dataset(folder, int(n) if n is not None else OFFICIAL["pathfinder"], int(seed),
                                        params, int(workers), metadata_format, progress=progress)
    manifest["path"] = str(folder / "manifest.json")
    return manifest


# -- CLI -------------------------------------------------------------------------------------------
def _fail(exc: UserError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return exc.exit_code


def cmd_check(args: argparse.Namespace) -> int:
    try:
        problems = check(args.task, args.data_dir, args.difficulty)
    except UserError as exc:
        return _fail(exc)
    for p in problems:
        print(f"problem: {p}")
    if problems:  # the list is on stdout; one summary line with the first problem on stderr
        more = f" (and {len(problems) - 1} more, listed above)" if len(problems) > 1 else ""
        print(f"error: data check --task {args.task}: {problems[0]}{more}", file=sys.stderr)
        return 1
    print(f"{args.task}: OK, data in {args.data_dir} looks complete")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    bar = tqdm(total=args.n, unit="img", desc=args.task, file=sys.stderr,
               disable=args.task == "listops" or not sys.stderr.isatty())
    try:
        manifest = generate(args.task, args.out, args.n, args.seed, args.workers, args.difficulty,
                            args.metadata_format, progress=bar.update)
    except UserError as exc:
        return _fail(exc)
    finally:
        bar.close()
    counts = ", ".join(f"{k}={v}" for k, v in manifest.get("counts", {}).items())
    print(f"{args.task}: generated {counts} with seed {manifest['seed']} in {manifest['seconds']:.1f} s; "
          f"manifest {manifest['path']}")
    return 0


def add_commands(subparsers) -> None:
    """Add `data check` and `data generate` to the harness CLI's subparsers."""
    data = subparsers.add_parser("data", help="check a data folder, or generate ListOps / Pathfinder data",
                                 description=__doc__.split("\n\n")[0])
    sub = data.add_subparsers(dest="data_command", metavar="{check,generate}", required=True)

    c = sub.add_parser("check", help="list missing, empty or malformed files of a task's data")
    c.add_argument("--task", required=True, choices=CHECKABLE, help="task whose files to check")
    c.add_argument("--data-dir", required=True, metavar="DIR", type=os.path.expanduser,  # a quoted '~/lra' too
                   help="folder holding the data (e.g. lra_release)")
    c.add_argument("--difficulty", default="hard", choices=("easy", "intermediate", "hard"),
                   help="Pathfinder difficulty folder to check (default: hard = curv_contour_length_14)")
    c.set_defaults(func=cmd_check)

    g = sub.add_parser("generate", help="generate ListOps or Pathfinder/Path-X data with a manifest")
    g.add_argument("--task", required=True, choices=GENERATABLE, help="task to generate")
    g.add_argument("--out", required=True, metavar="DIR", type=os.path.expanduser,
                   help="output folder (release layout inside)")
    g.add_argument("--n", type=int, default=None, metavar="N",
                   help="number of examples (default: the release's, 100000 ListOps / 200000 Pathfinder)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="W",
                   help="processes for Pathfinder generation (default: all cores)")
    g.add_argument("--difficulty", default="hard", choices=("easy", "intermediate", "hard"),
                   help="Pathfinder contour length 6 / 9 / 14 (default: hard)")
    g.add_argument("--metadata-format", default="text", choices=("text", "npy"),
                   help="Pathfinder metadata as released text (default) or upstream's binary .npy")
    g.set_defaults(func=cmd_generate)
