"""The plan of a run: which units of work a `RunConfig` asks for, each with its identity.

A unit is what one executor slot runs at a time, and what comes back as records:
- `reference`: one task's reference rows (majority class, logistic regression), fitted on its splits;
- `accuracy`: one (model, task, seed, learning-rate multiplier) training cell;
- `speed`: one model's speed/memory sweep in one mode, lengths ascending, so that the rule "after an
  out-of-memory length, the longer ones are `skipped`" stays inside one unit on one device.
Every record a unit can write is known here by its cell key (the resume key, defined once:
`harness.store.cell_key` through `train.cell_identity` and `bench.Cell`), so the runner skips what a
resumed run already holds and an executor that loses a unit can still write an `error` record for
each of its cells. A unit's `job` is plain data (dicts, lists, numbers), so it travels to a worker
process or a Ray task unchanged; `harness.executors.run_unit` executes it anywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field

from harness.config import RunConfig
from harness.errors import UserError


@dataclass
class Unit:
    """One unit of work (see the module docstring)."""

    kind: str  # reference | accuracy | speed
    label: str  # what a progress line calls it, e.g. "mega_tiny on image (seed 0)"
    job: dict  # plain data for `executors.run_unit`
    keys: list = field(default_factory=list)  # cell keys of the records it writes
    lost_records: list = field(default_factory=list)  # record fields per key, for an `error` when it is lost
    gpu: bool = False  # needs a GPU of its own (a CUDA cell)
    deadline: float | None = None  # seconds after which it is killed from outside (None: never)

    def pending(self, done: set) -> "Unit | None":
        """This unit less the cells in `done` (a resumed run's finished cells); None when nothing is left."""
        if self.keys and all(k in done for k in self.keys):
            return None
        if self.kind != "speed":
            return self
        left = [i for i, k in enumerate(self.keys) if k not in done]
        return dataclasses.replace(self, job={**self.job, "done_keys": sorted(set(self.keys) & done)},
                                   lost_records=[self.lost_records[i] for i in left],
                                   keys=[self.keys[i] for i in left])


@dataclass
class Plan:
    """What a run will do: the resolved models, tasks, device and dtype, and the units in order."""

    config: RunConfig
    models: list  # runnable model names as requested (accuracy cells may train their `_tiny` variant)
    tasks: list  # accuracy tasks ([] with --skip-train)
    device: str
    dtype: str
    broken: dict  # {requested name: why it cannot run}: each of its cells is an `error` record
    includes: list  # plugin files every worker imports
    failed_plugins: dict  # {file: import error}
    units: list = field(default_factory=list)
    broken_records: list = field(default_factory=list)  # written first, by the driver


# -- models ------------------------------------------------------------------------------------------

def resolve_models(config: RunConfig, failed_plugins: dict) -> tuple[list[str], dict]:
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


def check_overrides(config: RunConfig, models: list[str], task: str) -> None:
    """Every --set key must be a config key of at least one selected model, and every model must
    accept the values: each is built once on the meta device (no memory, no init cost) before the
    run is created, so a bad value is a usage error rather than a run full of failed cells."""
    import torch

    from harness.heads import build_classifier
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


def check_task_options(config: RunConfig, tasks: list[str], bench_task: str | None, command: str = "run") -> None:
    """Every --task-option must name a task of this run (an accuracy task, or the speed sweep's
    --bench-task) and an option that task has, with a value of its type: each task is made once with
    its options, so a mistake is a usage error before the run is created. The speed sweep times
    random inputs, so only the head options apply to a task that only it uses."""
    from harness.registry import TASKS

    used = list(dict.fromkeys([*tasks, *([bench_task] if bench_task else [])]))
    for task, options in config.task_option_map.items():
        given = " ".join(f"--task-option {task}.{k}={v}" for k, v in options.items())
        entry = TASKS.get(task)  # an unknown name: did-you-mean, exit 2
        if task not in used:
            where = f"--tasks {','.join(tasks)}" if tasks else "no accuracy tasks"
            sweep = f", speed sweep on --bench-task {bench_task}" if bench_task else ""
            fix = "add it to --tasks" if command == "run" else f"give --bench-task {task}"
            raise UserError(f"{given}: task {task} is not in this run ({where}{sweep}); {fix}, or drop "
                            f"the option")
        made = entry.cls(scale=config.scale, options=options).options  # checks and types the values
        data = [k for k in made.data_changed() if k in options] if task not in tasks else []
        if data:
            fix = f"add {task} to --tasks" if command == "run" else "use `run` to train on the option's data"
            raise UserError(f"--task-option {task}.{data[0]}={options[data[0]]}: the speed sweep times random "
                            f"inputs, so only the head options ({', '.join(made.HEAD)}) apply to it; {fix}, "
                            f"or drop the option")


def head_options(config: RunConfig, task: str) -> dict:
    """The changed head options (interaction, head dropout) of `task`: what a speed cell measures
    of the task's options (its inputs are random, so the data options do not apply)."""
    if not config.task_options(task):
        return {}
    made = config.build_task(task).options
    return {k: v for k, v in made.changed().items() if k in made.HEAD}


def train_name(model: str, config: RunConfig) -> str:
    """At a scale with tiny models, train `name_tiny` when the model has one."""
    from harness.registry import MODELS

    if config.scale_preset.tiny_models and not model.endswith("_tiny"):
        if f"{model}_tiny" in MODELS.names():
            return f"{model}_tiny"
    return model


# -- units -------------------------------------------------------------------------------------------

def _reference_units(plan: Plan, config: RunConfig) -> list[Unit]:
    from harness.registry import TASKS
    from harness.store import cell_key

    units = []
    for name in plan.tasks:
        version = TASKS.get(name).cls.spec.version
        changed = config.build_task(name).options.data_changed()
        extra = {"task_options": changed} if changed else {}  # default keys stay as they were
        key = cell_key(kind="reference", task=name, task_version=version, scale=config.scale,
                       data_seed=config.data_seed, data_dir=config.data_dir, **extra)
        units.append(Unit("reference", f"reference rows of {name}", keys=[key],
                          job=dict(kind="reference", task=name, key=key, config=config.to_dict(),
                                   includes=plan.includes)))
    return units


def _accuracy_units(plan: Plan, config: RunConfig) -> list[Unit]:
    from harness.executors import outside_deadline
    from harness.records import row_label
    from harness.registry import MODELS
    from harness.train import cell_identity

    units = []
    for task in plan.tasks:
        for model in plan.models:
            name = train_name(model, config)
            for multiplier in config.lr_multipliers:
                for seed in config.seed_list:
                    lr = f", lr x{multiplier:g}" if len(config.lr_multipliers) > 1 else ""
                    task_options = {}
                    try:
                        cell = cell_identity(name, task, seed, config, device=plan.device, dtype=plan.dtype,
                                             lr_multiplier=multiplier)
                        keys, lost, task_options = [cell["key"]], [cell["base"]], cell["base"]["task_options"]
                    except UserError:
                        raise
                    except Exception:  # a broken plugin task: the cell itself records why
                        keys, lost = [], []
                    job = dict(kind="accuracy", model=name, task=task, seed=seed, lr_multiplier=multiplier,
                               config=config.to_dict(), device=plan.device, dtype=plan.dtype,
                               includes=plan.includes)
                    label = row_label(name, MODELS.get(name).variant(task, config.model_overrides, config.swept_keys),
                                      task_options, task)
                    units.append(Unit("accuracy", f"{label} on {task} (seed {seed}{lr})", job=job, keys=keys,
                                      lost_records=lost, gpu=plan.device == "cuda",
                                      deadline=outside_deadline(config.cell_timeout)))
    return units


def speed_cells(config: RunConfig, models: list[str], device: str, dtype: str, includes: list) -> list:
    """The speed cells of `models`, every mode and length."""
    from harness.bench import Cell

    head = head_options(config, config.bench_task)
    extra = {"task_options": head} if head else {}  # cells with the task's default head stay as they were
    return [Cell(model=m, task=config.bench_task, seq_len=L, batch_size=config.bench_batch, dtype=dtype,
                 device=device, mode=mode, warmup=config.warmup, iters=config.iters, threads=config.threads,
                 overrides=config.model_overrides, swept=config.swept_keys, cuda_graphs=config.cuda_graphs,
                 includes=list(includes), **extra)
            for m in models for mode in config.mode_list for L in config.length_list]


def _speed_units(plan: Plan, config: RunConfig, as_trained: bool) -> list[Unit]:
    """One unit per model and mode. `as_trained` (the sweep of `run`): measure the networks the
    accuracy cells train, i.e. the `*_tiny` variants at a scale with tiny models, so speed and
    accuracy describe the same models. `bench` measures exactly the models named."""
    from harness.bench import bare_record
    from harness.records import row_label

    models = plan.models
    if as_trained:
        models = list(dict.fromkeys(train_name(m, config) for m in models))
    cells = speed_cells(config, models, plan.device, plan.dtype, plan.includes)
    groups: dict[tuple, list] = {}
    for cell in cells:
        groups.setdefault((cell.model, cell.mode), []).append(cell)
    units = []
    for (model, mode), group in groups.items():
        group.sort(key=lambda c: c.seq_len)
        bare = [bare_record(c) for c in group]
        lengths = ",".join(str(c.seq_len) for c in group)
        job = dict(kind="speed", cells=[dataclasses.asdict(c) for c in group], isolation=config.isolation,
                   timeout=config.cell_timeout, includes=plan.includes)
        label = row_label(model, bare[0]["variant"], bare[0].get("task_options"), bare[0]["task"])
        units.append(Unit("speed", f"{label} {mode} L={lengths}", job=job, keys=[b["cell_key"] for b in bare],
                          lost_records=bare, gpu=plan.device == "cuda"))
    return units


def _broken_records(plan: Plan) -> list[dict]:
    from harness.store import make_record

    config, records = plan.config, []
    for name, reason in plan.broken.items():
        cells = [dict(kind="accuracy", task=t, mode="train") for t in plan.tasks]
        if not config.skip_bench:
            cells += [dict(kind="speed", task=config.bench_task, mode=mode, seq_len=L, batch_size=config.bench_batch)
                      for mode in config.mode_list for L in config.length_list]
        records += [make_record(model=name, status="error", error=reason, device=plan.device, dtype=plan.dtype, **cell)
                    for cell in cells]
    return records


def make_plan(config: RunConfig, command: str, failed_plugins: dict, device: str, dtype: str) -> Plan:
    """The units of `run` (reference rows, accuracy cells, then the speed sweep of the trained
    networks) or `bench` (the speed sweep of exactly the models named). Usage errors (unknown names,
    rejected --set values) are raised here, before any run folder exists."""
    from harness.registry import TASKS

    models, broken = resolve_models(config, failed_plugins)
    tasks = TASKS.resolve(config.tasks) if command == "run" and not config.skip_train else []
    variants = config.variants()  # one per point of a --sweep (or a --set with a comma list)
    TASKS.get(config.bench_task)
    speed_sweep = command == "bench" or not config.skip_bench
    for variant in variants:
        check_task_options(variant, tasks, config.bench_task if speed_sweep else None, command)
        check_overrides(variant, models, config.bench_task)
    includes = [p for p in config.include if str(p) not in failed_plugins]  # workers re-import them
    plan = Plan(config, models, tasks, device, dtype, broken, includes, failed_plugins)
    plan.broken_records = _broken_records(plan)
    if command == "run":
        if tasks and not config.no_reference_rows:
            for variant in variants:  # a sweep of a data option fits the rows on each variant's data
                plan.units += _reference_units(plan, variant)
        for variant in variants:
            plan.units += _accuracy_units(plan, variant)
        if not config.skip_bench:
            for variant in variants:
                plan.units += _speed_units(plan, variant, as_trained=True)
    else:
        for variant in variants:
            plan.units += _speed_units(plan, variant, as_trained=False)
    plan.units = _distinct(plan.units)
    return plan


def _distinct(units: list[Unit]) -> list[Unit]:
    """The units less those whose every cell an earlier unit already has: the variants of a sweep
    repeat the cells it does not touch (a task option of one task, a --set key another model lacks)."""
    seen, out = set(), []
    for unit in units:
        if unit.keys and all(k in seen for k in unit.keys):
            continue
        seen.update(unit.keys)
        out.append(unit)
    return out
