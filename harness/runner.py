"""The runner: `RunConfig` -> plan -> executor -> records -> store.

`run(RunConfig(...))` is the Python API behind `python -m harness run` and `bench`:

    from harness import RunConfig, run
    result = run(RunConfig(models="mega,transformer", tasks="image", seeds="0,1", skip_bench=True))
    result.records  # typed harness.records.Record objects, as stored

The runner is the only writer of the store. It opens (or, with `resume`, reopens and holds) the run,
makes the plan (harness/plan.py), drops the cells a resumed run already holds, hands the units to the
executor (harness/executors.py) and appends every record that comes back. Ctrl-C, SIGTERM and
SIGHUP stop it with the manifest `interrupted` and every finished record kept (`RunInterrupted`);
a full disk or a deleted run folder closes the manifest `failed` with the reason (a `UserError`).
Progress goes out as `executors.Event`s to `on_event`; the CLI renders them.

Under `torchrun --nproc-per-node N -m harness run ...` (WORLD_SIZE > 1) each accuracy cell trains
with DistributedDataParallel over the N processes (harness/train.py): rank 0 is the driver as
above; the other ranks train the same cells in lock step and write nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import RunConfig
from harness.errors import UserError

# Options that do not change which cells a run measures, or how: a resumed run may differ in them.
RESUME_MAY_CHANGE = {"resume", "quiet", "json", "no_report", "isolation", "cell_timeout", "results_dir",
                     "checkpoint_every", "include", "cache_dir", "no_reference_rows", "executor", "workers",
                     "gpus", "ray_address"}


@dataclass
class RunResult:
    """What `run` returns: the run's id and folder, and the records this call stored."""

    run_id: str
    run_dir: Path
    records: list = field(default_factory=list)  # harness.records.Record, in the order stored

    @property
    def failed(self) -> list:
        return [r for r in self.records if r.status == "error"]


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP stopped the run; its finished records are kept (`--resume run_id`)."""

    def __init__(self, run_id: str):
        super().__init__(run_id)
        self.run_id = run_id


def _open_run(config: RunConfig, command: list[str], held: contextlib.ExitStack):
    """A new run, or the one `resume` names; this driver holds it (a second driver of the same run is
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
        return run
    run = store.create(command, config.to_dict(), env.capture())
    held.enter_context(run.hold())
    return run


def _raise_interrupt(*_) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _stop_signals_interrupt():
    """SIGTERM (kill, a scheduler) and SIGHUP (a closed terminal or ssh session) stop the run as Ctrl-C
    does, while it runs (only the main thread can handle signals; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.getsignal(sig) for sig in stops}
    for sig in stops:
        signal.signal(sig, _raise_interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():  # None: a handler not set from Python; the default then
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _resolve_device(config: RunConfig) -> tuple[str, str]:
    from harness.env import resolve_device, resolve_dtype

    if config.executor == "ray" and config.device == "cuda":  # the GPUs may be on other machines
        return "cuda", resolve_dtype(config.dtype, "cuda")
    device = resolve_device(config.device)
    if config.cuda_graphs and device != "cuda":
        raise UserError("--cuda-graphs: CUDA graphs need a CUDA device, and this run is on the CPU; drop "
                        "--cuda-graphs or run on a GPU (--device cuda)")
    return device, resolve_dtype(config.dtype, device)


def _noop(_event) -> None:
    pass


def run(config: RunConfig, *, command: str = "run", argv: list[str] | None = None, on_event=None,
        executor=None) -> RunResult:
    """Run `config` (`command` "run": reference rows, accuracy cells and the speed sweep; "bench":
    the speed sweep of exactly the models named) and return the stored records. `executor`
    replaces the one `config.executor` names (e.g. a RayExecutor with its own init options)."""
    from harness import distributed
    from harness.executors import Event, make_executor, run_unit
    from harness.plan import make_plan
    from harness.records import Record
    from harness.registry import load_plugins
    from harness.store import utc_now

    if command not in ("run", "bench"):
        raise ValueError(f"command must be 'run' or 'bench', got {command!r}")
    config.validate()
    on_event = on_event or _noop
    failed_plugins = load_plugins(config.include)
    device, dtype = _resolve_device(config)
    world = distributed.world()
    if world.size > 1:
        device = world.prepare(config, device)
    plan = make_plan(config, command, failed_plugins, device, dtype)
    if world.rank > 0:  # a DDP follower: train the same cells in step with rank 0, store nothing
        world.follow(run_unit)
        return RunResult(run_id="", run_dir=Path(config.results_dir))
    argv = argv if argv is not None else [command]
    result = None
    with contextlib.ExitStack() as held:
        store_run = _open_run(config, ["python", "-m", "harness", *argv], held)
        result = RunResult(store_run.run_id, store_run.dir)
        done = store_run.done_keys()
        units = [u for u in (unit.pending(done) for unit in plan.units) if u is not None]
        if world.size > 1:
            world.lead(units, str(store_run.dir))
        what = (f"models {', '.join(plan.models)}; tasks {', '.join(plan.tasks) or '-'}; scale {config.scale}"
                if command == "run" else
                f"speed/memory of {', '.join(plan.models)} with the {config.bench_task} configurations at "
                f"L={','.join(map(str, config.length_list))}, batch {config.bench_batch}, {','.join(config.mode_list)}")
        resumed = f"; resuming ({len(done)} cells already measured)" if config.resume else ""
        on_event(Event("opened", text=f"run {store_run.run_id}: {what}; {device} {dtype}; executor {config.executor}"
                                      f"{resumed}; results in {store_run.dir}",
                       record={"cells": sum(max(1, len(u.keys)) for u in units)}))

        def store(record: dict) -> None:
            store_run.append(record)
            result.records.append(Record.from_dict(dict(record, run_id=store_run.run_id)))

        try:
            with _stop_signals_interrupt():
                for record in plan.broken_records:
                    store(record)
                chosen = executor or make_executor(config, plan)
                with contextlib.closing(chosen.execute(units, str(store_run.dir))) as events:
                    for event in events:
                        if event.kind == "record":
                            store(event.record)
                        on_event(event)
        except KeyboardInterrupt:
            store_run.close("interrupted", "stopped by Ctrl-C, SIGTERM or SIGHUP")
            raise RunInterrupted(store_run.run_id) from None
        except UserError as exc:  # a full disk, a deleted run folder, a data error: one error: line
            store_run.close("failed", str(exc))
            raise
        except BaseException as exc:
            store_run.close("failed", f"{type(exc).__name__}: {exc}")
            raise
        # not close(): if even the final status cannot be written, the user gets the error: line
        store_run.update_manifest(status="finished", finished=utc_now(), reason=None)
    return result
