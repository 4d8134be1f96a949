"""`python -m harness data check|generate`: inspect a user's data folder, or regenerate data offline.

    data check --task T --data-dir D [--task-option T.KEY=VALUE] [--include FILE.py]
        Asks task T (`Task.check`) for the problems of its files under D, in the layouts its reader
        accepts (lra.md §2, §9): missing or empty files, unreadable rows, wrong counts, images that are
        missing, empty, not PNG or damaged, checksum mismatches against a `manifest.json`. Counts are
        checked against the `manifest.json` written by `data generate` when there is one, else against
        the official release. Problems are listed on stdout, the first one also as a single `error:`
        line on stderr; exit status 0 when nothing is wrong, 1 otherwise.

    data generate --task T --out D [--n N] [--seed S] [--workers W] [--task-option T.KEY=VALUE]
                  [--include FILE.py]
        Asks task T (`Task.generate`, for tasks with `generatable = True`) to write its data in the
        layout its reader accepts under D, with a `manifest.json` holding the seed, generator
        parameters, counts and the sha256 of every file. `--data-dir D` then makes the task read it.

The commands know no task by name: any registered task works, a plugin's too (`--include`), and a
task's own settings (e.g. Pathfinder's difficulty) are its options (`--task-option`).

Python API: `check(task, data_dir, options=None) -> list[str]`,
`generate(task, out_dir, n=None, seed=0, workers=1, progress=None, options=None) -> dict`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.errors import UserError


def _task(name: str, options: dict | None):
    """An instance of registered task `name` with `options` (paper scale: the full data set)."""
    from harness.registry import TASKS

    return TASKS.get(name).cls(scale="paper", options=dict(options or {}))


def _names(can) -> str:
    from harness.registry import TASKS

    return ", ".join(n for n in TASKS.names() if can(TASKS.get(n).cls))


def _checkable(cls) -> bool:
    """The task overrides `Task.check` (the base's says it reads no files)."""
    from harness.task import Task

    return getattr(cls, "check", None) not in (None, getattr(Task, "check", None))


def _generatable(cls) -> bool:
    return bool(getattr(cls, "generatable", False))


def check(task_name: str, data_dir: str | Path, options: dict | None = None) -> list[str]:
    """Problems found in `data_dir` for a task (empty list = OK)."""
    task = _task(task_name, options)
    if not _checkable(type(task)):
        raise UserError(f"data check --task {task_name!r}: expected one of {_names(_checkable)} "
                        f"(task {task_name} reads no data files, so there is nothing to check)")
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise UserError(f"--data-dir {data_dir}: no such directory; give the folder that holds the data "
                        f"(e.g. the unpacked lra_release)", exit_code=1)
    if not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir}: is a file, expected a directory", exit_code=1)
    return list(task.check(data_dir))


def generate(task_name: str, out_dir: str | Path, n: int | None = None, seed: int = 0, workers: int = 1,
             progress=None, options: dict | None = None) -> dict:
    """Generate a task's data into `out_dir` (release layout); returns the manifest (with its `path`)."""
    task = _task(task_name, options)
    if not _generatable(type(task)):
        raise UserError(f"data generate --task {task_name!r}: expected one of "
                        f"{_names(_generatable)} (task {task_name} cannot be generated: "
                        f"{'it needs real data' if task.needs_data else 'it needs no files'})")
    if n is not None and int(n) < 1:
        raise UserError(f"--n {n}: expected a positive number of examples")
    if int(workers) < 1:
        raise UserError(f"--workers {workers}: expected at least 1")
    if int(seed) < 0:  # numpy's generators take no negative seed: refuse it before creating --out
        raise UserError(f"--seed {seed}: expected a non-negative integer, e.g. --seed 0")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: is a file, expected a directory", exit_code=1)
    return task.generate(out_dir, n=n, seed=int(seed), workers=int(workers), progress=progress)


# -- CLI -------------------------------------------------------------------------------------------
def _options(args: argparse.Namespace) -> dict:
    """The task's options from --task-option T.KEY=VALUE."""
    from harness.config import RunConfig
    from harness.registry import TASKS, load_plugins

    load_plugins(args.include)
    TASKS.get(args.task)  # an unknown name: did-you-mean, before the options are read
    given = RunConfig(task_option=list(args.task_option or [])).task_option_map
    others = sorted(set(given) - {args.task})
    if others:
        raise UserError(f"--task-option {others[0]}.KEY=...: names task {others[0]}, but this command is for "
                        f"task {args.task}; give --task-option {args.task}.KEY=VALUE")
    return dict(given.get(args.task, {}))  # checked, in one line, when check/generate build the task


def _fail(exc: UserError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return exc.exit_code


def cmd_check(args: argparse.Namespace) -> int:
    try:
        problems = check(args.task, args.data_dir, _options(args))
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


class _Progress:
    """A progress bar on a terminal, opened at the first report (a task that reports none shows none)."""

    def __init__(self, task: str, total: int | None):
        self.task, self.total, self.bar = task, total, None

    def __call__(self, done: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=self.task, file=sys.stderr, disable=not sys.stderr.isatty())
        self.bar.update(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_generate(args: argparse.Namespace) -> int:
    progress = _Progress(args.task, args.n)
    try:
        manifest = generate(args.task, args.out, args.n, args.seed, args.workers, progress, _options(args))
    except UserError as exc:
        return _fail(exc)
    finally:
        progress.close()
    counts = ", ".join(f"{k}={v}" for k, v in manifest.get("counts", {}).items())
    print(f"{args.task}: generated {counts} with seed {manifest.get('seed', args.seed)} in "
          f"{manifest.get('seconds', 0):.1f} s; manifest {manifest.get('path', args.out)}")
    return 0


def _common(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--task", required=True, help=f"registered task whose files to {what}")
    parser.add_argument("--task-option", action="append", metavar="TASK.KEY=VALUE",
                        help="set an option of the task (repeatable), e.g. --task-option pathfinder.difficulty=easy")
    parser.add_argument("--include", action="append", default=[], metavar="FILE.py",
                        help="a local plugin file to import (repeatable)")


def add_commands(subparsers) -> None:
    """Add `data check` and `data generate` to the harness CLI's subparsers."""
    data = subparsers.add_parser("data", help="check a task's data folder, or generate a task's data",
                                 description=__doc__.split("\n\n")[0])
    sub = data.add_subparsers(dest="data_command", metavar="{check,generate}", required=True)

    c = sub.add_parser("check", help="list missing, empty or malformed files of a task's data")
    _common(c, "check")
    c.add_argument("--data-dir", required=True, metavar="DIR", type=os.path.expanduser,  # a quoted '~/lra' too
                   help="folder holding the data (e.g. lra_release)")
    c.set_defaults(func=cmd_check)

    g = sub.add_parser("generate", help="generate a task's data with a manifest (tasks that have a generator)")
    _common(g, "generate")
    g.add_argument("--out", required=True, metavar="DIR", type=os.path.expanduser,
                   help="output folder (release layout inside)")
    g.add_argument("--n", type=int, default=None, metavar="N",
                   help="number of examples (default: the task's release size)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="W",
                   help="processes the generator may use (default: all cores)")
    g.set_defaults(func=cmd_generate)
