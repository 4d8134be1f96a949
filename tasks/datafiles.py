"""Tools for a task's `check(data_dir)` and `generate(out_dir, ...)` (the `data check|generate`
commands): a problem list, the `manifest.json` that generated data carries, and a safe output folder.

A manifest is a JSON object with at least `seed`, `counts` (whole numbers, e.g. {"train": 96000})
and `files` (path relative to the manifest's folder -> sha256). A check compares counts with the
manifest when there is one, else with the official release, and verifies every listed checksum.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

from harness.errors import UserError
from harness.files import atomic_write_text, sha256_file

MAX_LISTED = 10  # problems of one kind listed individually before a summary line
MANIFEST = "manifest.json"


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
    path = folder / MANIFEST
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


def verify_checksums(folder: Path, manifest: dict | None, problems: Problems) -> None:
    """A problem for every file the manifest lists that is missing or changed (nothing without one)."""
    for rel, digest in sorted((manifest or {}).get("files", {}).items()):
        path = folder / rel
        if not path.is_file():
            problems.add(f"{path}: listed in manifest.json but missing", "manifest file missing")
        elif sha256_file(path) != digest:
            problems.add(f"{path}: sha256 differs from manifest.json (file changed or damaged)", "checksum")


def expected_count(manifest: dict | None, key: str, official: int) -> tuple[int, str]:
    """(count to expect, where it comes from): the manifest's `counts[key]`, else the release's."""
    if manifest is not None and key in manifest.get("counts", {}):
        return int(manifest["counts"][key]), "manifest.json"
    return official, "the official release"


def write_manifest(folder: Path, manifest: dict) -> None:
    """`folder/manifest.json`, written all at once."""
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


@contextlib.contextmanager
def output_folder(folder: Path) -> Iterator[Path]:
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
