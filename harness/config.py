"""The one place for defaults: `RunConfig` feeds the CLI (flags and help), the Python API and the
manifest. Scale presets say how big an accuracy run is and which lengths a default sweep uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError

# -- value parsers (each raises UserError naming the flag) ---------------------------------------


MAX_INT = 2**31 - 1  # beyond any length, batch or seed a run can use; keeps torch from overflowing


def parse_int_list(flag: str, text: str, minimum: int = 1, maximum: int = MAX_INT) -> list[int]:
    items = [t.strip() for t in str(text).split(",")]
    if not text or not any(items):
        raise UserError(f"--{flag} is empty: give comma-separated integers, e.g. 1024,2048,4096")
    out = []
    for item in items:
        if not item:
            raise UserError(f"--{flag} {text!r}: empty item; give comma-separated integers, e.g. 1024,2048")
        try:
            value = int(item.replace("_", ""))
        except ValueError:
            suffix = {"k": 1024, "K": 1024}
            if item[-1:] in suffix and item[:-1].isdigit():
                value = int(item[:-1]) * suffix[item[-1]]
            else:
                raise UserError(f"--{flag} {text!r}: {item!r} is not an integer; "
                                f"give comma-separated integers, e.g. 1024,2048 (or 1k,2k)")
        if value < minimum:
            raise UserError(f"--{flag} {text!r}: {value} must be at least {minimum}")
        if value > maximum:
            raise UserError(f"--{flag} {text!r}: {value} must be at most {maximum}")
        if value not in out:  # a repeat would measure or train the same cell twice
            out.append(value)
    return out


def positive_int(flag: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(f"--{flag} {value!r}: expected a positive integer")
    if number < 1:
        raise UserError(f"--{flag} {value!r}: expected a positive integer (at least 1)")
    if number > MAX_INT:
        raise UserError(f"--{flag} {value!r}: expected a positive integer of at most {MAX_INT}")
    return number


def positive_float(flag: str, value, maximum: float = float("inf")) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"--{flag} {value!r}: expected a positive number")
    if not 0 < number < float("inf"):
        raise UserError(f"--{flag} {value!r}: expected a positive, finite number")
    if number > maximum:
        raise UserError(f"--{flag} {value!r}: expected a positive number of at most {maximum:g}")
    return number


def directory(flag: str, path, must_exist: bool) -> str:
    """A folder argument: not empty, not a file; an input folder must exist. Returned with `~`
    expanded (a quoted '~/x' reaches us unexpanded by the shell), so the rest of the program reads
    and writes the real folder rather than a literal ./~/x; otherwise the path is kept as given."""
    if not str(path or "").strip():
        raise UserError(f"--{flag} is empty: give a folder path")
    folder = Path(os.path.expanduser(str(path)))
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--{flag} {path}: is a file, not a folder")
    if must_exist and not folder.is_dir():
        raise UserError(f"--{flag} {path}: no such folder (check the path)")
    return os.path.expanduser(str(path))


def choice(flag: str, value: str, options: tuple) -> str:
    if value not in options:
        raise UserError(f"--{flag} {value!r}: expected one of {', '.join(options)}")
    return value


# -- scale presets --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scale:
    """How big an accuracy run is (`--scale`); the task decides its own data sizes per scale."""

    name: str
    tiny_models: bool  # train the `*_tiny` variant of each model (CPU-sized)
    total_steps: int | None  # None: the model's per-task paper setting
    batch_size: int | None  # None: the model's per-task paper setting
    lr: float | None  # None: the model's per-task paper setting
    warmup_fraction: float | None  # warm-up as a fraction of steps (None: paper warm-up steps)
    eval_every: int | None  # validation interval (None: 20 evaluations per run)
    bench_lengths: tuple  # default lengths of the speed/memory sweep
    bench_batch: int  # default batch of the speed/memory sweep


SCALES = {
    "smoke": Scale("smoke", True, 300, 32, 2e-3, 0.1, 100, (256, 512, 1024), 2),
    "small": Scale("small", False, 3000, 32, None, 0.1, 250, (1024, 2048, 4096), 8),
    "paper": Scale("paper", False, None, None, None, None, None, (1024, 2048, 4096, 8192, 16384), 25),
}
DTYPES = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
MODES = ("train_step", "forward")
ISOLATION = ("auto", "subprocess", "inprocess")
EXECUTORS = ("local", "pool", "ray")


def _opt(help: str, commands: tuple = ("run", "bench"), metavar: str | None = None, **kw):
    meta = dict(help=help, commands=commands, metavar=metavar)
    if "default_factory" in kw:
        factory = kw.pop("default_factory")
        return field(default_factory=factory, metadata={**meta, **kw})
    return field(default=kw.pop("default", None), metadata={**meta, **kw})


ALL = ("run", "bench", "table", "ls", "env", "report", "compare")


@dataclass
class RunConfig:
    """Every option of `run` and `bench`, with its default and help text (shown by --help)."""

    models: str = _opt("comma-separated model names or wildcards ('all' = every full-size model)",
                       default="mega,mega_chunk,transformer,s4d", metavar="NAMES")
    tasks: str = _opt("comma-separated task names for accuracy runs ('all' = every task); the default, "
                      "image, reads CIFAR-10 from --data-dir when given, else Fashion-MNIST as a labelled "
                      "stand-in (the embedded 16x16 subset at smoke scale)",
                      commands=("run",), default="image", metavar="NAMES")
    bench_task: str = _opt("task whose per-task model configuration the speed/memory sweep uses "
                           "(the papers' Table 2 protocol uses text; `bench` also takes --task)",
                           default="text", metavar="TASK", aliases={"bench": ("--task",)})
    lengths: str = _opt("comma-separated sequence lengths of the speed/memory sweep "
                        "(default: the scale's, e.g. 256,512,1024 for smoke)", metavar="L1,L2,...")
    batch_size: int = _opt("batch size of the speed/memory sweep (default: the scale's); for "
                           "accuracy runs it overrides the scale/model batch", metavar="N")
    dtype: str = _opt("precision: fp32, or bf16/fp16 autocast (auto = bf16 on CUDA, fp32 on CPU)",
                      default="auto", choices=DTYPES)
    device: str = _opt("cpu or cuda (auto = cuda when available)", default="auto", choices=DEVICES)
    scale: str = _opt("size preset: smoke (minutes on a CPU, tiny models), small, paper "
                      "(the papers' steps and batches)", default="smoke", choices=tuple(SCALES))
    seeds: str = _opt("comma-separated training seeds: tables report mean ± sd and a 95%% interval over "
                      "them and rank nothing with one seed (the papers average 5)", commands=("run",),
                      default="0,1,2", metavar="S1,S2,...")
    data_seed: int = _opt("seed of generated data and splits; training seeds (--seeds) vary only the "
                          "model, so every seed sees the same data", commands=("run",), default=0, metavar="S")
    modes: str = _opt("speed/memory modes: train_step (forward+backward+AdamW step) and/or forward",
                      default="train_step", metavar="MODES")
    set: list = _opt("override a model-config value for every model, e.g. --set compile=true or "
                     "--set chunk_size=256 (repeatable; values parse as JSON, else as text); a comma list that "
                     "is not one JSON value, e.g. --set attention=softmax,relu2,laplace, is a sweep (see --sweep)",
                     default_factory=list, metavar="KEY=VALUE", action="append")
    sweep: list = _opt("run every value of a model-config key as its own labelled variant row, e.g. --sweep "
                       "chunk_size=16,64,128 (repeatable: several keys give their product); each value parses "
                       "as JSON, else as text", default_factory=list, metavar="KEY=V1,V2,...", action="append")
    task_option: list = _opt("set an option of one task, e.g. --task-option text.seq_len=1000 or --task-option "
                             "retrieval.interaction=nli (repeatable; the value is read as the option's type; "
                             "`python -m harness ls` lists each task's options); a changed option is recorded "
                             "(`task_options`) and labels the row; a comma list, e.g. text.seq_len=1000,4096, "
                             "is a sweep (one labelled row per value)", default_factory=list,
                             metavar="TASK.KEY=VALUE", action="append")
    steps: int = _opt("training steps (overrides the scale preset)", commands=("run",), metavar="N")
    lr: float = _opt("peak learning rate (overrides scale and model defaults)", commands=("run",),
                     metavar="LR")
    lr_grid: str = _opt("learning-rate grid: comma-separated multipliers of each model's own peak learning "
                        "rate (e.g. 1/3,1,3); every point is trained and stored, and per model the point "
                        "with the best mean validation accuracy is reported, with its value",
                        commands=("run",), metavar="F1,F2,...")
    time_budget: float = _opt("seconds of training per accuracy cell: train until the deadline (or the last "
                              "step), then test the best-validation weights so far (equal wall-clock "
                              "comparisons); the record states the steps reached", commands=("run",),
                              metavar="SECONDS")
    no_reference_rows: bool = _opt("run: do not fit the reference rows (majority class and a logistic "
                                   "regression on the raw input, fitted on every task's own splits)",
                                   commands=("run",), default=False, action="store_true")
    warmup: int = _opt("warm-up iterations before timing (measurement.md asks for at least 3; more "
                       "when a compiler or autotuner runs)", default=3, metavar="N")
    iters: int = _opt("timed iterations per cell (at least 10 recommended)", default=10, metavar="N")
    cuda_graphs: bool = _opt("speed cells (CUDA only): capture the whole timed iteration (forward, backward, "
                             "optimizer step) in a CUDA graph and time its replays, which removes host "
                             "overhead for every model alike; recorded as the runtime setting cuda_graphs and "
                             "labelled in the rows; a model that cannot be captured gets an error record",
                             default=False, action="store_true")
    isolation: str = _opt("process isolation of cells: auto/subprocess run each speed cell in a fresh "
                          "subprocess (peak memory and allocator state cannot leak between cells) and the "
                          "accuracy cells in a worker process (a crash, exit or hang inside a model becomes "
                          "that cell's error record; --cell-timeout is then also enforced from outside); "
                          "inprocess runs everything in this process: faster to start, but a crashing "
                          "model ends the run and CPU peak-RSS numbers are less reliable",
                          default="auto", choices=ISOLATION)
    threads: int = _opt("torch CPU threads per cell (default: all cores; with --executor pool, the cores "
                        "divided among the workers; with ray, 1)", metavar="N")
    executor: str = _opt("where cells run: local (one after another here), pool (worker processes on this "
                         "machine: one per GPU of --gpus, or --workers on CPU) or ray (tasks on a Ray cluster, "
                         "see --ray-address; pip install 'lsm-harness[ray]')", default="local", choices=EXECUTORS)
    workers: int = _opt("--executor pool on CPU: worker processes (default 2), the cores divided among them",
                        metavar="N")
    gpus: str = _opt("--executor pool: GPU indices, one worker each; a worker sees only its GPU "
                     "(default: every visible GPU)", metavar="0,1,...")
    ray_address: str = _opt("--executor ray: the cluster to join (auto, or HOST:PORT of its head; default: a "
                            "local cluster started for this run)", metavar="ADDRESS")
    cell_timeout: float = _opt("seconds after which a cell is stopped and recorded as error: timeout",
                               metavar="SECONDS")
    checkpoint_every: int = _opt("training steps between resumable checkpoints (default: none at smoke "
                                 "scale, every 500 steps otherwise)", commands=("run",), metavar="N")
    results_dir: str = _opt("where runs are stored", commands=ALL, default="results", metavar="DIR")
    data_dir: str = _opt("folder with real data (e.g. the LRA release); missing data uses "
                         "regenerated data or labelled stand-ins", commands=("run",), metavar="DIR")
    cache_dir: str = _opt("cache of generated and tokenised data", commands=("run",),
                          default=".cache", metavar="DIR")
    include: list = _opt("a local plugin file to import (repeatable)", commands=ALL,
                         default_factory=list, metavar="FILE.py", action="append")
    resume: str = _opt("continue run RUN_ID: cells already measured with the same config are skipped",
                       metavar="RUN_ID")
    skip_bench: bool = _opt("run: skip the speed/memory sweep", commands=("run",), default=False,
                            action="store_true")
    skip_train: bool = _opt("run: skip the accuracy runs", commands=("run",), default=False,
                            action="store_true")
    no_report: bool = _opt("run: do not write the HTML report", commands=("run",), default=False,
                           action="store_true")
    quiet: bool = _opt("no progress bars or tables, only errors", commands=ALL, default=False,
                       action="store_true")
    json: bool = _opt("print machine-readable JSON instead of tables", commands=ALL, default=False,
                      action="store_true")

    def validate(self) -> "RunConfig":
        """Check every value; raise UserError with a one-line message for the first bad one."""
        choice("dtype", self.dtype, DTYPES)
        choice("device", self.device, DEVICES)
        choice("scale", self.scale, tuple(SCALES))
        choice("isolation", self.isolation, ISOLATION)
        choice("executor", self.executor, EXECUTORS)
        if self.workers is not None:
            self.workers = positive_int("workers", self.workers)
        if self.gpus is not None:
            ids = [g.strip() for g in str(self.gpus).split(",")]
            if not all(g.isdigit() for g in ids) or len(set(ids)) != len(ids):
                raise UserError(f"--gpus {self.gpus!r}: expected distinct GPU indices, e.g. 0,1,2,3")
        for flag, value, wanted in (("workers", self.workers, "pool"), ("gpus", self.gpus, "pool"),
                                    ("ray-address", self.ray_address, "ray")):
            if value is not None and self.executor != wanted:
                raise UserError(f"--{flag} applies to --executor {wanted}; add --executor {wanted} or drop --{flag}")
        for mode in self.mode_list:
            choice("modes", mode, MODES)
        if self.lengths is not None:
            parse_int_list("lengths", self.lengths)
        if self.batch_size is not None:
            self.batch_size = positive_int("batch-size", self.batch_size)
        if self.steps is not None:
            self.steps = positive_int("steps", self.steps)
        if self.lr is not None:
            self.lr = positive_float("lr", self.lr)
        if self.checkpoint_every is not None:
            self.checkpoint_every = positive_int("checkpoint-every", self.checkpoint_every)
        if self.threads is not None:
            self.threads = positive_int("threads", self.threads)
        if self.cell_timeout is not None:
            self.cell_timeout = positive_float("cell-timeout", self.cell_timeout, maximum=30 * 86400)
        if self.time_budget is not None:
            self.time_budget = positive_float("time-budget", self.time_budget, maximum=30 * 86400)
        self.lr_multipliers  # noqa: B018 (validates --lr-grid)
        self.results_dir = directory("results-dir", self.results_dir, must_exist=False)
        self.cache_dir = directory("cache-dir", self.cache_dir, must_exist=False)
        if self.data_dir is not None:
            self.data_dir = directory("data-dir", self.data_dir, must_exist=True)
        if self.skip_train and self.skip_bench:
            raise UserError("--skip-train with --skip-bench leaves nothing to run: drop one of them")
        if self.resume is not None and (not str(self.resume).strip() or any(c in str(self.resume) for c in "/\\")
                                        or str(self.resume).startswith(".")):
            raise UserError(f"--resume {self.resume!r}: expected a run id (a folder name in --results-dir, "
                            f"e.g. 20261122-101500-1a2b3c4), not a path")
        self.iters = positive_int("iters", self.iters)
        try:
            self.warmup = int(self.warmup)
        except (TypeError, ValueError):
            raise UserError(f"--warmup {self.warmup!r}: expected an integer of at least 0")
        if self.warmup < 0:
            raise UserError(f"--warmup {self.warmup}: expected an integer of at least 0")
        parse_int_list("seeds", self.seeds, minimum=0)
        self.override_grid  # noqa: B018 (validates --set and --sweep)
        self.task_option_grid  # noqa: B018 (validates the form of --task-option; plan.py checks names and values)
        self.data_seed = parse_int_list("data-seed", str(self.data_seed), minimum=0)[0]
        return self

    @property
    def model_overrides(self) -> dict:
        """The single-valued --set KEY=VALUE pairs as a dict (JSON values: true, 3, 0.1, "x"; anything
        else is text); the swept keys are in `override_grid`."""
        return {key: values[0] for key, values in self._override_axes().items() if len(values) == 1}

    @property
    def override_grid(self) -> list[dict]:
        """Every combination of the swept values (--sweep, and --set with a comma list), each with the
        single-valued --set pairs: one dict per variant, in the order given ([{...}] without a sweep)."""
        import itertools

        axes = self._override_axes()
        keys = list(axes)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]

    def variants(self) -> list["RunConfig"]:
        """One config per point of `override_grid` and of `task_option_grid`, its overrides and task
        options all single-valued (itself without a sweep)."""
        import json

        grid, options = self.override_grid, self.task_option_grid
        if len(grid) == 1 and len(options) == 1:
            return [self]
        swept = self.swept_keys
        return [dataclasses.replace(self, set=[f"{k}={json.dumps(v)}" for k, v in point.items() if k not in swept],
                                    sweep=[f"{k}={json.dumps(v)}" for k, v in point.items() if k in swept],
                                    task_option=items)
                for point in grid for items in options]

    @property
    def swept_keys(self) -> list[str]:
        """Keys given several values (or with --sweep): they label every row of the sweep, also where
        a value equals the model's registered one."""
        axes = self._override_axes()
        named = {str(item).partition("=")[0].strip() for item in self.sweep or []}
        return [k for k, values in axes.items() if len(values) > 1 or k in named]

    def _override_axes(self) -> dict:
        """{key: [values]} from --set (one value, or a sweep) and --sweep (always a list of values)."""
        import json

        def parse(text: str):
            try:
                return json.loads(text)
            except ValueError:
                return text

        axes: dict = {}
        for flag, items in (("set", self.set), ("sweep", self.sweep)):
            for item in items or []:
                key, sep, value = str(item).partition("=")
                key = key.strip()
                if not sep or not key.isidentifier():
                    raise UserError(f"--{flag} {item!r}: expected KEY=VALUE with a config key, e.g. "
                                    f"--{flag} {'compile=true' if flag == 'set' else 'chunk_size=64,128'}")
                try:
                    values = [json.loads(value)]
                    if flag == "sweep" and isinstance(values[0], list):
                        values = values[0]
                except ValueError:
                    values = [parse(v.strip()) for v in value.split(",")] if "," in value else [value]
                if any(v == "" for v in values):
                    raise UserError(f"--{flag} {item!r}: an empty value; give e.g. {key}=a,b,c")
                if key in axes:
                    raise UserError(f"--{flag} {key}=...: {key} is given twice; give its values once "
                                    f"(a sweep: {key}=V1,V2)")
                axes[key] = list(dict.fromkeys(json.dumps(v, sort_keys=True) for v in values))
                axes[key] = [json.loads(v) for v in axes[key]]
        return axes

    @property
    def task_option_map(self) -> dict:
        """--task-option TASK.KEY=VALUE as {task: {key: value text}}; the task checks and types the
        values (harness.task.make_options). A comma list is a sweep: each of `variants()` has one value."""
        out: dict = {}
        for (task, key), values in self._task_option_axes().items():
            if len(values) > 1:
                raise UserError(f"--task-option {task}.{key}={','.join(values)}: several values (a sweep) "
                                f"apply to run and bench only; give one value, or quote a text with commas "
                                f"(\"a,b\")")
            out.setdefault(task, {})[key] = values[0]
        return out

    def _task_option_axes(self) -> dict:
        """{(task, key): [value text, ...]} from --task-option: one value, or a comma list (a sweep,
        as with --set); a value in double quotes is one text, commas and all."""
        import json

        axes: dict = {}
        for item in self.task_option or []:
            name, sep, value = str(item).partition("=")
            task, dot, key = name.strip().partition(".")
            task, key, value = task.strip(), key.strip(), value.strip()
            if not sep or not dot or not task or not key.isidentifier():
                raise UserError(f"--task-option {item!r}: expected TASK.KEY=VALUE, e.g. --task-option "
                                f"text.seq_len=1000")
            if len(value) >= 2 and value[0] == value[-1] == '"':
                try:
                    values = [str(json.loads(value))]
                except ValueError:
                    raise UserError(f"--task-option {item!r}: the quoted value is not a valid JSON string") from None
            else:
                values = [v.strip() for v in value.split(",")]
            if not value or any(not v for v in values):
                raise UserError(f"--task-option {item!r}: an empty value; give e.g. {task}.{key}=VALUE "
                                f"(a sweep: {task}.{key}=V1,V2)")
            if (task, key) in axes:
                raise UserError(f"--task-option {task}.{key}=...: given twice; give its values once "
                                f"(a sweep: {task}.{key}=V1,V2)")
            axes[(task, key)] = list(dict.fromkeys(values))
        return axes

    @property
    def task_option_grid(self) -> list[list[str]]:
        """Every combination of the --task-option values, each as single-valued TASK.KEY=VALUE items."""
        import itertools
        import json

        axes = self._task_option_axes()

        def item(task, key, value):  # quoted when a comma would read as a sweep
            return f"{task}.{key}={json.dumps(value) if ',' in value else value}"

        return [[item(*name, value) for name, value in zip(axes, combo)]
                for combo in itertools.product(*axes.values())]

    def task_options(self, task: str) -> dict:
        """The --task-option values of one task ({} when none: the task's defaults)."""
        return dict(self.task_option_map.get(task, {}))

    def build_task(self, task: str, *, read: bool = False):
        """Registered task `task` at this run's scale with its --task-option values (checked and
        typed); `read`: also the data seed and folders, to load its splits."""
        from harness.registry import TASKS

        data = dict(seed=self.data_seed, data_dir=self.data_dir, cache_dir=self.cache_dir) if read else {}
        return TASKS.get(task).cls(scale=self.scale, options=self.task_options(task), **data)

    @property
    def lr_multipliers(self) -> list[float]:
        """--lr-grid as multipliers of each model's peak learning rate ([1.0] without a grid)."""
        if self.lr_grid is None:
            return [1.0]
        items = [t.strip() for t in str(self.lr_grid).split(",")]
        out = []
        for item in items:
            numerator, _, denominator = item.partition("/")
            try:
                value = float(numerator) / float(denominator) if denominator else float(numerator)
            except (ValueError, ZeroDivisionError):
                value = float("nan")
            if not 0 < value < float("inf"):
                raise UserError(f"--lr-grid {self.lr_grid!r}: {item!r} is not a positive number; give "
                                f"comma-separated multipliers of each model's learning rate, e.g. 1/3,1,3")
            if value not in out:
                out.append(value)
        return out

    @property
    def scale_preset(self) -> Scale:
        return SCALES[self.scale]

    @property
    def length_list(self) -> list[int]:
        if self.lengths is None:
            return list(self.scale_preset.bench_lengths)
        return sorted(set(parse_int_list("lengths", self.lengths)))  # ascending: the OOM rule needs it

    @property
    def seed_list(self) -> list[int]:
        return parse_int_list("seeds", self.seeds, minimum=0)

    @property
    def mode_list(self) -> list[str]:
        modes = [m.strip() for m in str(self.modes).split(",") if m.strip()]
        if not modes:
            raise UserError(f"--modes {self.modes!r}: give train_step and/or forward")
        return list(dict.fromkeys(modes))

    @property
    def bench_batch(self) -> int:
        return self.batch_size or self.scale_preset.bench_batch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the RunConfig fields used by `command` to an argparse parser (help from the metadata)."""
    for f in dataclasses.fields(RunConfig):
        meta = f.metadata
        if command not in meta.get("commands", ()):
            continue
        flags = ["--" + f.name.replace("_", "-"), *meta.get("aliases", {}).get(command, ())]
        kwargs = dict(help=meta["help"], dest=f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        action = meta.get("action")
        if action == "store_true":
            kwargs.update(action="store_true", default=False)
        elif action == "append":
            kwargs.update(action="append", default=[], metavar=meta.get("metavar"))
        else:
            kwargs.update(default=default, metavar=meta.get("metavar"))
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
                kwargs.pop("metavar")
            if default is not None:
                kwargs["help"] += f" (default: {default})"
        parser.add_argument(*flags, **kwargs)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    names = {f.name for f in dataclasses.fields(RunConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return RunConfig(**values).validate()
