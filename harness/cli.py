"""`python -m harness <command>`: run, bench, ls, env, table, report, compare, data.

Data flows one way: config -> registry -> runners (train.py, bench.py) -> records -> store ->
tables / plots / report. Options and their defaults live in `harness.config.RunConfig`.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import difflib
import json
import signal
import sys
import threading
import warnings

from harness.config import RunConfig, add_arguments, config_from_args
from harness.errors import UserError

DESCRIPTION = ("Benchmark long-sequence models (MEGA, MEGA-chunk, Transformer, S4, linear attention, "
               "Mamba) on Long Range Arena tasks: accuracy, speed and peak memory across lengths.")


# -- helpers -----------------------------------------------------------------------------------------

def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=quiet or not sys.stderr.isatty(), leave=False,
                dynamic_ncols=True)


def load_plugins(config_or_args) -> dict:
    """Import --include files; returns {file: error} for those that raised on import (reported as
    warnings, recorded against the models they would have provided; the other models still run)."""
    from harness.registry import MODELS, TASKS, PluginImportError, include_file

    MODELS.ensure_loaded()
    TASKS.ensure_loaded()
    if not getattr(config_or_args, "quiet", False):
        for source, error in {**MODELS.load_errors, **TASKS.load_errors}.items():
            print(f"warning: plugin {source} failed to load: {error}", file=sys.stderr)
    failed = {}
    for path in getattr(config_or_args, "include", None) or []:
        try:
            include_file(path)
        except PluginImportError as exc:
            failed[str(path)] = str(exc)
            if not getattr(config_or_args, "quiet", False):
                print(f"warning: {exc}", file=sys.stderr)
    return failed


def _resolve_models(config: RunConfig, failed_plugins: dict) -> tuple[list[str], dict]:
    """(runnable model names, {requested name: why it cannot run}).

    An unknown name is a usage error (did-you-mean, exit 2) unless a plugin failed to import, in
    which case the name is most likely that plugin's: it gets an `error` record and the others run.
    """
    from harness.registry import MODELS

    plugin_errors = {**failed_plugins, **MODELS.load_errors}
    if not plugin_errors:
        return MODELS.resolve(config.models), {}
    models, broken = [], {}
    for item in [m.strip() for m in config.models.split(",") if m.strip()]:
        try:
            models.extend(n for n in MODELS.resolve(item) if n not in models)
        except UserError:
            if difflib.get_close_matches(item, MODELS.names(), n=1, cutoff=0.8):
                raise  # a misspelt registered name, not a missing plugin model: did-you-mean
            broken[item] = "not registered; plugin import failed: " + "; ".join(plugin_errors.values())
    if not models and not broken:
        raise UserError("--models is empty: give one or more model names")
    return models, broken


def _check_overrides(config: RunConfig, models: list[str], task: str) -> None:
    """Every --set key must be a config key of at least one selected model, and every model must
    accept the values: each is built once on the meta device (no memory, no init cost) before the
    run is created, so a bad value is a usage error rather than a run full of failed cells."""
    import torch

    from harness.bench import build_classifier
    from harness.registry import MODELS

    overrides = config.model_overrides
    for key in overrides:
        if models and not any(key in MODELS.get(m).config(task) for m in models):
            raise UserError(f"--set {key}=...: none of {', '.join(models)} has a config key '{key}' "
                            f"(see the model_config of a stored record for the keys)")
    for name in models:
        entry = MODELS.get(name)
        mine = entry.known_overrides(task, overrides)
        if not mine or not entry.availability()[0]:
            continue
        given = " ".join(f"--set {k}={json.dumps(v)}" for k, v in mine.items())
        try:
            with torch.device("meta"):
                build_classifier(name, task, mine)
        except UserError as exc:
            raise UserError(f"{given}: model '{name}' rejects it: {exc}") from None
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise UserError(f"{given}: model '{name}' cannot be built with it ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); check the value's type "
                            f"and range") from None
        except Exception:  # not a value problem (e.g. an init that needs real tensors): cells report it
            continue


def _record_broken(run, broken: dict, tasks: list[str], config: RunConfig, device: str, dtype: str) -> list[dict]:
    from harness.store import make_record

    records = []
    for name, reason in broken.items():
        cells = [dict(kind="accuracy", task=t, mode="train") for t in tasks]
        if not config.skip_bench:
            cells += [dict(kind="speed", task=config.bench_task, mode=mode, seq_len=L, batch_size=config.bench_batch)
                      for mode in config.mode_list for L in config.length_list]
        for cell in cells:
            records.append(make_record(model=name, status="error", error=reason, device=device, dtype=dtype, **cell))
            run.append(records[-1])
    return records


def _report_failures(records: list[dict]) -> int:
    """Say why cells failed, one line per model and error (also with --quiet: these are errors);
    the exit status is 1 when cells failed and none succeeded."""
    failed = [r for r in records if r.get("status") == "error"]
    if not failed:
        return 0
    groups: dict[tuple, list[str]] = {}
    for r in failed:
        where = f"L={r['seq_len']}" if r.get("seq_len") else f"{r.get('task')} seed {r.get('seed')}"
        groups.setdefault((r["model"], r.get("kind"), r.get("error") or "no message"), []).append(where)
    print(f"{len(failed)} of {len(records)} cells failed:", file=sys.stderr)
    for (model, kind, error), where in groups.items():
        print(f"  {model} {kind} ({', '.join(dict.fromkeys(where))}): {error}", file=sys.stderr)
    return 0 if any(r.get("status") == "ok" for r in records) else 1


def _train_name(model: str, config: RunConfig) -> str:
    """At a scale with tiny models, train `name_tiny` when the model has one."""
    from harness.registry import MODELS

    if config.scale_preset.tiny_models and not model.endswith("_tiny"):
        if f"{model}_tiny" in MODELS.names():
            return f"{model}_tiny"
    return model


# Options that do not change which cells a run measures, or how: a resumed run may differ in them.
RESUME_MAY_CHANGE = {"resume", "quiet", "json", "no_report", "isolation", "cell_timeout", "results_dir",
                     "checkpoint_every", "include", "cache_dir", "no_reference_rows"}


def _open_run(config: RunConfig, command: list[str], held: contextlib.ExitStack):
    """A new run, or the one --resume names; this driver holds it (a second driver of the same run is
    refused, naming the holder) until `held` closes."""
    from harness import env
    from harness.store import RunStore

    store = RunStore(config.results_dir)
    if config.resume:
        run = store.open(config.resume)
        held.enter_context(run.hold())  # before the manifest is read or changed
        previous = run.manifest.get("config", {})
        changed = [f"--{k.replace('_', '-')} was {previous[k]!r}, now {v!r}" for k, v in config.to_dict().items()
                   if k not in RESUME_MAY_CHANGE and k in previous and previous[k] != v]
        if changed:
            raise UserError(f"--resume {run.run_id}: the options differ from the run's ({'; '.join(changed)}); "
                            f"repeat the run's options, or start a new run without --resume")
        run.update_manifest(status="running", resumed=(run.manifest.get("resumed") or 0) + 1)
        if previous and not config.quiet:
            print(f"resuming run {run.run_id} ({len(run.done_keys())} cells already measured)", file=sys.stderr)
        return run
    run = store.create(command, config.to_dict(), env.capture())
    held.enter_context(run.hold())
    return run


def _speed_cells(config: RunConfig, models: list[str], device: str, dtype: str, failed_plugins: dict,
                 as_trained: bool = False):
    """Speed cells of `models`. `as_trained` (the sweep of `run`): measure the networks the accuracy
    cells train, i.e. the `*_tiny` variants at a scale with tiny models, so speed and accuracy describe
    the same models. `bench` measures exactly the models named."""
    from harness.bench import Cell

    includes = [p for p in config.include if str(p) not in failed_plugins]  # the child re-imports them
    if as_trained:
        models = list(dict.fromkeys(_train_name(m, config) for m in models))
    return [Cell(model=m, task=config.bench_task, seq_len=L, batch_size=config.bench_batch, dtype=dtype,
                 device=device, mode=mode, warmup=config.warmup, iters=config.iters, threads=config.threads,
                 overrides=config.model_overrides,
                 includes=includes)
            for m in models for mode in config.mode_list for L in config.length_list]


def _bench(config: RunConfig, run, models, device, dtype, failed_plugins: dict, as_trained: bool = False) -> list[dict]:
    from harness.bench import sweep

    cells = _speed_cells(config, models, device, dtype, failed_plugins, as_trained)
    isolate = config.isolation != "inprocess"
    with _progress(len(cells), "speed/memory", config.quiet) as bar:
        return sweep(cells, run, subprocess_isolation=isolate, timeout=config.cell_timeout, progress=bar,
                     done_keys=run.done_keys(),
                     on_start=lambda c: _cell_started(config, f"{c.model} {c.mode} L={c.seq_len}", bar))


def _references(config: RunConfig, run, tasks: list[str]) -> list[dict]:
    """The reference rows of every task (majority class, logistic regression on the raw input), fitted
    on the very splits the models see; once per task and data seed (resume skips them)."""
    from harness.reference import fit_reference_rows
    from harness.registry import TASKS

    from harness.store import cell_key

    done, records = run.done_keys(), []
    for name in tasks:
        task = TASKS.get(name).cls(scale=config.scale, seed=config.data_seed, data_dir=config.data_dir,
                                   cache_dir=config.cache_dir)
        key = cell_key(kind="reference", task=name, task_version=task.spec.version, scale=config.scale,
                       data_seed=config.data_seed, data_dir=config.data_dir)
        if key in done:
            continue
        try:
            splits = {s: task.load(s) for s in ("train", "val", "test")}
        except UserError:
            raise
        except Exception:  # the models' cells record the data error; the reference rows have no data
            continue
        rows = fit_reference_rows(name, task.input_spec(), splits, scale=config.scale, data_seed=config.data_seed,
                                  seq_len=task.seq_len)
        for record in rows:
            record["cell_key"] = key  # both rows of a task are one unit of work for --resume
            run.append(record)
            records.append(record)
            if not config.quiet:
                print(_one_line(record), file=sys.stderr)
    return records


def _train(config: RunConfig, run, models, tasks, device, dtype, failed_plugins: dict) -> list[dict]:
    """The accuracy cells, in a worker process unless --isolation inprocess (harness/cellworker.py:
    a crash or a hang inside a model becomes that cell's error record and the run goes on)."""
    from harness.cellworker import CellLost, CellWorker, outside_deadline
    from harness.store import make_record
    from harness.train import cell_identity, train_cell

    done = run.done_keys()
    jobs = [(m, t, s, f) for t in tasks for m in models for f in config.lr_multipliers for s in config.seed_list]
    includes = [p for p in config.include if str(p) not in failed_plugins]
    records = []
    with _progress(len(jobs), "accuracy", config.quiet) as bar, CellWorker(includes) as worker:
        for model, task, seed, multiplier in jobs:
            name = _train_name(model, config)
            try:
                cell = cell_identity(name, task, seed, config, device=device, dtype=dtype, lr_multiplier=multiplier)
            except UserError:
                raise
            except Exception:  # a broken plugin task: train_cell records why as this cell's error
                cell = None
            if cell is not None and cell["key"] in done:
                bar.update(1)
                continue
            lr = f", lr x{multiplier:g}" if len(config.lr_multipliers) > 1 else ""
            _cell_started(config, f"{name} on {task} (seed {seed}{lr})", bar)
            if config.isolation == "inprocess" or cell is None:
                record = train_cell(name, task, seed, config, device=device, dtype=dtype, run=run, progress=bar,
                                    lr_multiplier=multiplier)
            else:
                job = dict(model=name, task=task, seed=seed, config=config, device=device, dtype=dtype,
                           run_dir=str(run.dir), lr_multiplier=multiplier)
                try:
                    record = worker.train(job, outside_deadline(config.cell_timeout))
                except CellLost as lost:
                    record = make_record(status="error", error=str(lost), **cell["base"])
            run.append(record)
            records.append(record)
            if not config.quiet and not bar.disable:
                bar.write(_one_line(record))
            elif not config.quiet:
                print(_one_line(record), file=sys.stderr)
            bar.update(1)
    return records


def _cell_started(config: RunConfig, what: str, bar=None) -> None:
    """Say which cell starts, as it starts: a cell takes minutes to hours, and a run whose stderr is a
    file or a pipe (no progress bar) would otherwise show nothing until the first cell ends."""
    if config.quiet:
        return
    if bar is not None and not bar.disable:
        bar.write(f"  starting {what}", file=sys.stderr)  # above the live bar, not through it
    else:
        print(f"  starting {what}", file=sys.stderr, flush=True)


def _one_line(record: dict) -> str:
    from harness.records import row_label

    train = record.get("train") or {}
    lr = f", lr {train['lr']:.2g}" if train.get("lr_grid") else ""
    what = f"{row_label(record['model'], record.get('variant'))} on {record['task']} (seed {record['seed']}{lr})"
    m = record.get("metrics") or {}
    if record["status"] != "ok":
        return f"  {what}: {record['status']}: {record.get('error') or ''}"
    if record.get("model_family") == "reference":
        return f"  {what}: test accuracy {100 * m['accuracy']:.1f}% (reference row)"
    stopped = f", stopped by {m['stopped']} at step {m.get('steps')}" if m.get("stopped") else ""
    return f"  {what}: test accuracy {100 * m['accuracy']:.1f}% (best val {100 * m['val_accuracy']:.1f}% " \
           f"at step {m['best_step']}, {m['train_seconds']:.0f} s{stopped})"


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


def _raise_interrupt(*_) -> None:
    raise KeyboardInterrupt


def _stop_signals() -> list:
    """SIGTERM (kill, a scheduler) and SIGHUP (a closed terminal or ssh session) where the platform has it."""
    return [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])


def _interruptible(run, body) -> int:
    """Run `body()`; Ctrl-C, SIGTERM or SIGHUP marks the manifest `interrupted` (records stay intact)."""
    from harness.store import utc_now

    previous = {sig: signal.getsignal(sig) for sig in _stop_signals()}
    for sig in previous:
        signal.signal(sig, _raise_interrupt)
    try:
        body()
    except KeyboardInterrupt:
        run.close("interrupted", "stopped by Ctrl-C, SIGTERM or SIGHUP")
        try:  # after a SIGHUP the terminal may be gone: the manifest above is what counts
            print(f"\ninterrupted: run {run.run_id} keeps every finished record; continue with "
                  f"--resume {run.run_id}", file=sys.stderr)
        except OSError:
            pass
        return 130
    except UserError as exc:  # a full disk or a deleted run folder: main() prints the one error: line
        run.close("failed", str(exc))
        raise
    except BaseException as exc:
        run.close("failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        for sig, handler in previous.items():  # None: a handler not set from Python; the default then
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    # not close(): if even the final status cannot be written, the user gets the error: line
    run.update_manifest(status="finished", finished=utc_now(), reason=None)
    return 0


# -- commands ------------------------------------------------------------------------------------------

def cmd_run(args) -> int:
    from harness.env import resolve_device, resolve_dtype
    from harness.registry import TASKS

    config = config_from_args(args)
    failed_plugins = load_plugins(config)
    models, broken = _resolve_models(config, failed_plugins)
    tasks = TASKS.resolve(config.tasks) if not config.skip_train else []
    _check_overrides(config, models, config.bench_task)
    TASKS.get(config.bench_task)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    records = []
    with contextlib.ExitStack() as held:
        run = _open_run(config, ["python", "-m", "harness", *args.argv], held)
        if not config.quiet:
            print(f"run {run.run_id}: models {', '.join(models)}; tasks {', '.join(tasks) or '-'}; "
                  f"scale {config.scale}; {device} {dtype}; results in {run.dir}", file=sys.stderr)

        def body():
            records.extend(_record_broken(run, broken, tasks, config, device, dtype))
            if not config.skip_train:
                if not config.no_reference_rows:
                    records.extend(_references(config, run, tasks))
                records.extend(_train(config, run, models, tasks, device, dtype, failed_plugins))
            if not config.skip_bench:
                records.extend(_bench(config, run, models, device, dtype, failed_plugins, as_trained=True))

        code = _interruptible(run, body)
    if code:
        return code
    _print_tables(config, run.run_id)
    if not config.no_report:
        from harness.report.html import write_report

        path = write_report(config.results_dir, [run.run_id], None)
        if not config.quiet:
            print(f"report: {path}", file=sys.stderr if config.json else sys.stdout)
    return _report_failures(records)


def cmd_bench(args) -> int:
    from harness.env import resolve_device, resolve_dtype
    from harness.registry import TASKS

    config = config_from_args(args)
    failed_plugins = load_plugins(config)
    models, broken = _resolve_models(config, failed_plugins)
    TASKS.get(config.bench_task)
    _check_overrides(config, models, config.bench_task)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    records = []
    with contextlib.ExitStack() as held:
        run = _open_run(config, ["python", "-m", "harness", *args.argv], held)
        if not config.quiet:
            print(f"run {run.run_id}: speed/memory of {', '.join(models)} with the {config.bench_task} "
                  f"configurations at L={','.join(map(str, config.length_list))}, batch {config.bench_batch}, "
                  f"{device} {dtype}, {','.join(config.mode_list)}", file=sys.stderr)
        code = _interruptible(run, lambda: records.extend(
            _record_broken(run, broken, [], config, device, dtype) + _bench(config, run, models, device, dtype,
                                                                            failed_plugins)))
    if code:
        return code
    _print_tables(config, run.run_id)
    return _report_failures(records)


def _param_count(entry, task_name: str) -> int | None:
    """Parameters of the whole classifier (backbone + harness head) for a task, built on the meta device."""
    from harness.bench import build_classifier
    from harness.heads import count_parameters

    import torch

    for device in ("meta", "cpu"):  # meta: no memory, no init cost; some inits need real tensors
        try:
            with torch.device(device):
                model, *_ = build_classifier(entry.name, task_name)
            return count_parameters(model)
        except Exception:
            continue
    return None


def cmd_ls(args) -> int:
    from harness.registry import MODELS, TASKS

    load_plugins(args)
    pattern = args.pattern or "*"
    model_rows, task_rows = [], []
    task_names = [t for t in TASKS.names() if TASKS.get(t).cls.spec.lra] or TASKS.names()
    for name in MODELS.list(pattern):
        entry = MODELS.get(name)
        ok, reason = entry.availability()
        row = dict(name=name, family=entry.family, complexity=entry.complexity,
                   available="yes" if ok else f"no: {reason}", paper=entry.paper, origin=entry.origin)
        if args.params:
            row["params"] = {t: _param_count(entry, t) for t in task_names}
        model_rows.append(row)
    for name in TASKS.list(pattern):
        spec = TASKS.get(name).cls.spec
        task_rows.append(dict(name=name, length=spec.seq_len, input=spec.input_kind, vocab=spec.vocab_size,
                              classes=spec.num_classes, target=spec.target, dual=spec.dual,
                              splits="/".join(str(spec.splits.get(s, "?")) for s in ("train", "val", "test")),
                              metric=spec.metric, lra="yes" if spec.lra else "no", version=spec.version,
                              description=spec.description, origin=TASKS.get(name).origin))
    if not model_rows and not task_rows:
        raise UserError(f"nothing matches {pattern!r}: no model or task has such a name "
                        f"(try `python -m harness ls` without a pattern)", exit_code=1)
    errors = {**MODELS.load_errors, **TASKS.load_errors}
    if args.json:
        print(json.dumps(dict(models=model_rows, tasks=task_rows, plugin_errors=errors), indent=2))
        return 0
    import pandas as pd

    with pd.option_context("display.max_colwidth", 60, "display.width", 250, "display.max_columns", 50):
        if model_rows:
            frame = pd.DataFrame(model_rows).drop(columns=["origin"])
            if args.params:
                params = frame.pop("params").apply(pd.Series)
                params.columns = [f"params[{c}]" for c in params.columns]
                frame = pd.concat([frame.drop(columns=["paper"]), params.map(_fmt_count)], axis=1)
            print("Models\n" + frame.to_string(index=False))
        if task_rows:
            print("\nTasks\n" + pd.DataFrame(task_rows).drop(columns=["origin", "description"]).to_string(index=False))
    return 0


def _fmt_count(n) -> str:
    if n is None or n != n:
        return "n/a"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


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
             "→": "->", "†": "+", "…": "...", "≈": "~", "µ": "u", "°": " deg"}


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
    warnings.simplefilter("default")
    # one `warning: ...` line: Python's format adds our source file and line, noise to a user
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
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
