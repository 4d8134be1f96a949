"""`python -m harness <command>`: run, bench, ls, env, table, report, compare, data.

Data flows one way: config -> plan -> executor -> records -> store -> tables / plots / report.
`run` and `bench` hand a `harness.config.RunConfig` (every option, its default and help) to
`harness.runner.run` and render its events; the other commands read the store.
"""

from __future__ import annotations

import argparse
import codecs
import json
import signal
import sys
import threading

from harness.config import RunConfig, add_arguments, config_from_args
from harness.errors import UserError
from harness.logs import install_handler

DESCRIPTION = ("Benchmark long-sequence models (MEGA, MEGA-chunk, Transformer, S4, linear attention, "
               "Mamba) on Long Range Arena tasks: accuracy, speed and peak memory across lengths.")


# -- rendering a run's events ---------------------------------------------------------------------------

def _one_line(record: dict) -> str:
    from harness.records import row_label

    train = record.get("train") or {}
    lr = f", lr {train['lr']:.2g}" if train.get("lr_grid") else ""
    row = row_label(record["model"], record.get("variant"), record.get("task_options"), record["task"])
    what = f"{row} on {record['task']} (seed {record['seed']}{lr})"
    m = record.get("metrics") or {}
    if record["status"] != "ok":
        return f"  {what}: {record['status']}: {record.get('error') or ''}"
    if record.get("model_family") == "reference":
        return f"  {what}: test accuracy {100 * m['accuracy']:.1f}% (reference row)"
    stopped = f", stopped by {m['stopped']} at step {m.get('steps')}" if m.get("stopped") else ""
    return f"  {what}: test accuracy {100 * m['accuracy']:.1f}% (best val {100 * m['val_accuracy']:.1f}% " \
           f"at step {m['best_step']}, {m['train_seconds']:.0f} s{stopped})"


class ProgressView:
    """Renders a run's events: a line as each unit starts (also when stderr is not a terminal: a cell
    takes minutes to hours, and a run writing to a file or pipe would otherwise show nothing until the
    first cell ends), a line per accuracy record, and a tqdm bar over the cells on a terminal."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None

    def __call__(self, event) -> None:
        if self.quiet:
            return
        if event.kind == "opened":
            from tqdm import tqdm

            print(event.text, file=sys.stderr, flush=True)
            self.bar = tqdm(total=event.record["cells"], desc="cells", disable=not sys.stderr.isatty(),
                            leave=False, dynamic_ncols=True)
        elif event.kind == "start":
            where = f" ({event.text})" if event.text else ""
            self.write(f"  starting {event.unit.label}{where}")
        elif event.kind == "submitted":
            self.write(f"  submitted {event.unit.label}")
        elif event.kind == "note":
            self.write(f"  {event.text}")
        elif event.kind == "progress" and self.bar is not None:
            self.bar.set_postfix_str(event.text)
        elif event.kind == "record":
            record = event.record
            if record.get("kind") != "speed":
                self.write(_one_line(record))
            if self.bar is not None:
                self.bar.update(1)
                if record.get("kind") == "speed":
                    self.bar.set_postfix_str(f"{record['model']} L={record.get('seq_len')} {record['status']}")

    def write(self, line: str) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line, file=sys.stderr)  # above the live bar, not through it
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _report_failures(records: list) -> int:
    """Say why cells failed, one line per model and error (also with --quiet: these are errors);
    the exit status is 1 when cells failed and none succeeded."""
    failed = [r for r in records if r.status == "error"]
    if not failed:
        return 0
    groups: dict[tuple, list[str]] = {}
    for r in failed:
        where = f"L={r.seq_len}" if r.seq_len and r.kind == "speed" else f"{r.task} seed {r.seed}"
        groups.setdefault((r.model, r.kind, r.error or "no message"), []).append(where)
    print(f"{len(failed)} of {len(records)} cells failed:", file=sys.stderr)
    for (model, kind, error), where in groups.items():
        print(f"  {model} {kind} ({', '.join(dict.fromkeys(where))}): {error}", file=sys.stderr)
    return 0 if any(r.status == "ok" for r in records) else 1


def _print_tables(config: RunConfig, run_id: str) -> None:
    from harness.report import tables
    from harness.store import load_records

    frame = load_records(config.results_dir, [run_id])
    if config.json:  # one object per record; nested fields only in their flattened `a.b` columns
        nested = [c for c in frame.columns if any(k.startswith(f"{c}.") for k in frame.columns)]
        print(frame.drop(columns=nested).to_json(orient="records", default_handler=str))
        return
    if config.quiet:
        return
    print(tables.render_all(frame, fmt="markdown"))


# -- commands ------------------------------------------------------------------------------------------

def _run_command(args, command: str) -> int:
    """`run` and `bench`: the runner does the work; this renders it and prints tables and the report."""
    from harness.runner import RunInterrupted, run

    config = config_from_args(args)
    view = ProgressView(config.quiet)
    try:
        result = run(config, command=command, argv=args.argv, on_event=view)
    except RunInterrupted as stop:
        view.close()
        try:  # after a SIGHUP the terminal may be gone: the manifest is what counts
            print(f"\ninterrupted: run {stop.run_id} keeps every finished record; continue with "
                  f"--resume {stop.run_id}", file=sys.stderr)
        except OSError:
            pass
        return 130
    finally:
        view.close()
    if not result.run_id:  # a data-parallel follower rank: rank 0 prints and reports
        return 0
    _print_tables(config, result.run_id)
    if command == "run" and not config.no_report:
        from harness.report.html import write_report

        path = write_report(config.results_dir, [result.run_id], None)
        if not config.quiet:
            print(f"report: {path}", file=sys.stderr if config.json else sys.stdout)
    return _report_failures(result.records)


def cmd_run(args) -> int:
    return _run_command(args, "run")


def cmd_bench(args) -> int:
    return _run_command(args, "bench")


def cmd_ls(args) -> int:
    from harness import listing
    from harness.registry import load_plugins

    load_plugins(args.include)
    pattern = args.pattern or "*"
    found = listing.catalogue(pattern, params=args.params)
    if not found["models"] and not found["tasks"]:
        raise UserError(f"nothing matches {pattern!r}: no model or task has such a name "
                        f"(try `python -m harness ls` without a pattern)", exit_code=1)
    print(json.dumps(found, indent=2) if args.json else listing.render(found))
    return 0


def cmd_env(args) -> int:
    from harness import env

    info = env.capture()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    gpus = ", ".join(f"{g['name']} ({g['memory_total_bytes'] / 2**30:.0f} GiB, driver {g['driver']})"
                     for g in info["gpus"]) or "none"
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v) or "none"
    git = info["git"]
    print(f"python {info['python']} on {info['platform']}\n"
          f"torch {info['torch']} (CUDA {info['cuda'] or '-'}, cuDNN {info['cudnn'] or '-'}, "
          f"CUDA available: {info['cuda_available']})\n"
          f"GPUs: {gpus}\nCPU: {info['cpu']} ({info['cpu_count']} cores, {info['torch_threads']} torch threads), "
          f"RAM {(info['ram_bytes'] or 0) / 2**30:.1f} GiB, host {info['hostname']}\n"
          f"packages: {packages}\n"
          f"harness {info['harness_version']} at git {git['sha'] or '-'}{' (dirty)' if git['dirty'] else ''}")
    return 0


# -- parser --------------------------------------------------------------------------------------------

class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (which argument, what is wrong, where to look) and exit 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m harness", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="accuracy runs + speed/memory sweep + tables + HTML report",
                         description="Train and evaluate models on tasks, sweep speed and memory across lengths, "
                                     "store the records, print LRA-style tables and write a report.")
    add_arguments(run, "run")
    run.set_defaults(func=cmd_run)
    bench = sub.add_parser("bench", help="speed/memory across sequence lengths",
                           description="Measure training-step (and/or forward) time and peak memory across "
                                       "--lengths, per measurement.md.")
    add_arguments(bench, "bench")
    bench.set_defaults(func=cmd_bench)
    ls = sub.add_parser("ls", help="models and tasks with metadata and availability")
    ls.add_argument("pattern", nargs="?", help="shell wildcard, e.g. 'mega*'")
    ls.add_argument("--params", action="store_true", help="also count parameters per LRA task (slower)")
    add_arguments(ls, "ls")
    ls.set_defaults(func=cmd_ls)
    env_parser = sub.add_parser("env", help="the environment a run would record")
    add_arguments(env_parser, "env")
    env_parser.set_defaults(func=cmd_env)
    from harness.datacmd import add_commands as add_data_commands
    from harness.report.cli import add_commands as add_report_commands

    add_report_commands(sub)
    add_data_commands(sub)
    return parser


# What the harness prints beyond ASCII, and how it reads in ASCII: a terminal or pipe that is not
# UTF-8 (PYTHONIOENCODING=ascii, LANG=C on an old system) gets these instead of a UnicodeEncodeError.
ASCII_FOR = {"±": "+-", "×": "x", "·": "*", "–": "-", "—": "-", "≥": ">=", "≤": "<=", "√": "sqrt", "⚠": "!",
             "→": "->", "†": "+", "…": "...", "≈": "~", "µ": "u", "°": " deg", "²": "^2", "∝": "~"}


def _transliterate(exc: UnicodeError):
    """A codecs error handler: each character the stream cannot encode becomes its ASCII spelling
    from ASCII_FOR, or `?`."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    return "".join(ASCII_FOR.get(ch, "?") for ch in exc.object[exc.start:exc.end]), exc.end


codecs.register_error("harness-ascii", _transliterate)


def _degrade_output_to_ascii() -> None:
    """Make stdout and stderr transliterate (see ASCII_FOR) where their encoding lacks our symbols."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            "".join(ASCII_FOR).encode(getattr(stream, "encoding", None) or "ascii")
            continue
        except (UnicodeEncodeError, LookupError):
            pass
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="harness-ascii")


def _stop_on_sigint() -> None:
    """A script's `python -m harness run ... &` starts with SIGINT ignored, and Python then installs
    no Ctrl-C handler: an explicit `kill -INT` should still stop the run and record it interrupted."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _degrade_output_to_ascii()
    parser = build_parser()  # imports no torch: a mistyped option is answered at once
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed a one-line usage error
        return int(exc.code or 0)
    args.argv = argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _stop_on_sigint()
    install_handler(quiet=getattr(args, "quiet", False))
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
