"""Registries of models and tasks (timm / lm-evaluation-harness ergonomics).

A model plugin is a factory decorated with `@register_model("name", ...)` that returns a sequence
*backbone*: `forward(x: (B, L, d) float, padding_mask: (B, L) bool, True = pad, or None) -> (B, L, d)`.
The factory receives the resolved architecture config as keyword arguments (always including
`d_model`); the harness owns embedding, pooling, classifier head and dual encoding
(`harness/heads.py`). A task plugin is a class decorated with `@register_task("name")`
(see `harness/task.py`).

Where entries come from, in order (built-ins win a name clash):
1. built-ins: the modules of the `harness_models` and `harness_tasks` packages (the repository's
   `models/` and `tasks/` folders, installed under those names);
2. installed plugins: entry-point groups `harness.models` and `harness.tasks` (each entry point
   names a module or callable; importing/calling it registers its entries);
3. local files given with `--include FILE.py`.
A duplicate name is an error naming both origins unless `override=True` is passed.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.errors import UserError

log = logging.getLogger("harness")

MODEL_GROUP = "harness.models"
TASK_GROUP = "harness.tasks"
FAMILIES = ("attention", "ssm", "linear-attention", "hybrid", "recurrent", "other")


def natural_key(name: str) -> list:
    """Sort key that orders `mega2` before `mega10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class PluginImportError(UserError):
    """A plugin file or entry point raised while importing (the run records it and goes on)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=1)


BUILTIN_PACKAGES = ("harness_models", "harness_tasks")


@functools.lru_cache(maxsize=None)
def _distributions() -> dict:
    return importlib.metadata.packages_distributions()


def plugin_source(module: str, origin: str) -> str:
    """Which plugin supplied an entry, for `ls` and every record: the harness itself
    ("built-in lsm-harness 0.1.0"), an installed distribution ("mypkg 1.2.0") or a file."""
    top = module.split(".")[0]
    if top in BUILTIN_PACKAGES:
        from harness.version import __version__

        return f"built-in lsm-harness {__version__}"
    if top == "__main__" or top.startswith("harness_include_"):
        return "file " + origin.rsplit(":", 1)[0]
    for dist in _distributions().get(top, ()):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"module {module}"


def plugin_sources(model: str | None, task: str | None) -> dict:
    """{"model": source, "task": source} for a record, from the registries as loaded in this process;
    a name not registered here (e.g. a reference row's) is left out."""
    out = {}
    for kind, registry, name in (("model", MODELS, model), ("task", TASKS, task)):
        entry = registry._entries.get(name) if name else None
        if entry is not None and entry.source:
            out[kind] = entry.source
    return out


def _caller_origin(depth: int = 2) -> str:
    frame = inspect.stack()[depth]
    return f"{frame.filename}:{frame.lineno}"


@dataclass
class ModelEntry:
    """What `@register_model` records about one model."""

    name: str
    factory: Callable[..., Any]
    family: str
    paper: str  # citation, e.g. "Ma et al., ICLR 2023 (arXiv 2209.10655)"
    complexity: str  # e.g. "O(L^2)", "O(L C)", "O(L log L)"
    defaults: dict  # architecture kwargs for the factory (must include d_model)
    task_configs: dict = field(default_factory=dict)  # task -> architecture overrides
    train_configs: dict = field(default_factory=dict)  # task -> optimiser/schedule hints
    requires: tuple = ()  # optional importable packages; missing -> unavailable
    probe: Callable[[], str | None] | None = None  # extra run-time check; returns a reason or None
    origin: str = ""  # where it was registered (module:function or file:line)
    description: str = ""
    tiny_of: str | None = None  # for `*_tiny` variants: the full-size model's name
    tiny_overrides: dict = field(default_factory=dict)
    runtime_keys: tuple = ()  # config keys that choose how, not what, the model computes
    # A published efficiency row for this model (not its tiny variant), shown beside ours and never
    # mixed with it: {"speed": ratio, "memory": ratio, "source": "where, which protocol"}.
    published: dict = field(default_factory=dict)
    # (rank, what it is) when this model is a reference of the efficiency tables' speed and memory
    # ratios, e.g. (1, "materialised softmax attention (the papers' XFM)"); () for other models.
    efficiency_reference: tuple = ()
    # Hook that adapts an architecture config to a cell's sequence length (e.g. MEGA widens its
    # positional bias to the length, as the official code does): (config, seq_len) -> overrides.
    fit_length: Callable[[dict, int], dict] | None = None
    source: str = ""  # which plugin supplied it (see plugin_source)

    def split_config(self, config: dict) -> tuple[dict, dict]:
        """(architecture, runtime settings) of a resolved config: the architecture is the model's
        identity (hashed); runtime settings (implementation, compilation, kernels) are recorded
        beside it, so eager and compiled runs of one model stay comparable."""
        arch = {k: v for k, v in config.items() if k not in self.runtime_keys}
        return arch, {k: v for k, v in config.items() if k in self.runtime_keys}

    def config(self, task: str | None = None, overrides: dict | None = None) -> dict:
        """Resolved architecture kwargs: defaults < per-task config < tiny shrink < user overrides.

        `None` overrides are dropped so CLI defaults never override model defaults.
        """
        cfg = dict(self.defaults)
        if task is not None:
            cfg.update(self.task_configs.get(task, {}))
        cfg.update(self.tiny_overrides)
        cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cfg

    def known_overrides(self, task: str | None, overrides: dict | None) -> dict:
        """The subset of `overrides` whose keys this model's config has (for --set across models)."""
        keys = self.config(task)
        return {k: v for k, v in (overrides or {}).items() if k in keys}

    def variant(self, task: str | None, overrides: dict | None, swept=()) -> dict:
        """The user's overrides that change this model's registered config for `task`: they label
        its row (`mega [attention=laplace]`); an override equal to the registered value labels nothing,
        unless its key is `swept` (every row of a sweep names its value)."""
        registered = self.config(task)
        return {k: v for k, v in self.known_overrides(task, overrides).items()
                if registered.get(k) != v or k in swept}

    def train_config(self, task: str | None) -> dict:
        return dict(self.train_configs.get(task, {})) if task else {}

    def availability(self) -> tuple[bool, str]:
        """(available, reason). Never raises: a broken optional package is a reason, not a crash."""
        for package in self.requires:
            try:
                spec = importlib.util.find_spec(package)
            except (ImportError, ValueError) as exc:  # a parent package that fails to import
                return False, f"optional package '{package}' cannot be found: {exc}"
            if spec is None:
                return False, f"optional package '{package}' is not installed"
        if self.probe is not None:
            try:
                reason = self.probe()
            except Exception as exc:  # a probe must not take the listing down
                reason = f"probe failed: {type(exc).__name__}: {exc}"
            if reason:
                return False, reason
        return True, ""

    def build(self, task: str | None = None, overrides: dict | None = None):
        ok, reason = self.availability()
        if not ok:
            raise UserError(f"model '{self.name}' is unavailable: {reason}", exit_code=1)
        return self.factory(**self.config(task, overrides))


@dataclass
class TaskEntry:
    name: str
    cls: type
    origin: str = ""
    source: str = ""  # which plugin supplied it (see plugin_source)

    @property
    def spec(self):
        return self.cls.spec


class Registry:
    """Name -> entry, with wildcard listing, did-you-mean errors and duplicate detection."""

    def __init__(self, kind: str, group: str, builtin_package: str):
        self.kind = kind  # "model" or "task"
        self.group = group
        self.builtin_package = builtin_package
        self._entries: dict[str, Any] = {}
        self._loaded = False
        self.load_errors: dict[str, str] = {}  # plugin source -> error text (shown by `ls`)

    # -- registration -------------------------------------------------------------------------
    def add(self, entry, override: bool = False) -> None:
        existing = self._entries.get(entry.name)
        if existing is not None and not override:
            if existing.origin == entry.origin:  # the same module imported twice (e.g. reload)
                return
            raise UserError(
                f"duplicate {self.kind} name '{entry.name}': registered by {existing.origin} "
                f"and again by {entry.origin}; rename one, or pass override=True to replace it",
                exit_code=1,
            )
        self._entries[entry.name] = entry

    # -- discovery ----------------------------------------------------------------------------
    def ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module(self.builtin_package)  # its __init__ imports every family
        builtin_names = set(self._entries)
        for ep in _entry_points(self.group):
            try:
                target = ep.load()
                if callable(target) and not inspect.ismodule(target):
                    target()
            except UserError as exc:
                if any(f"'{n}'" in str(exc) for n in builtin_names):
                    self.load_errors[f"entry point {ep.name} ({ep.value})"] = (
                        f"ignored: {exc} (built-ins win)"
                    )
                else:
                    self.load_errors[f"entry point {ep.name} ({ep.value})"] = str(exc)
            except Exception as exc:
                self.load_errors[f"entry point {ep.name} ({ep.value})"] = (
                    f"{type(exc).__name__}: {exc}"
                )

    def __contains__(self, name) -> bool:
        self.ensure_loaded()
        return name in self._entries

    def names(self) -> list[str]:
        self.ensure_loaded()
        return sorted(self._entries, key=natural_key)

    def get(self, name: str):
        self.ensure_loaded()
        if name in self._entries:
            return self._entries[name]
        raise UserError(self._unknown_message(name))

    def _unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        if self.load_errors:
            hint += f"(plugins that failed to load: {'; '.join(self.load_errors)}) "
        return (
            f"unknown {self.kind} '{name}': {hint}available: {', '.join(names)} "
            f"(see `python -m harness ls`)"
        )

    def list(self, pattern: str | list[str] = "*", exclude: str | list[str] = ()) -> list[str]:
        """Names matching shell wildcards, naturally sorted; `exclude` patterns are removed."""
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        excludes = [exclude] if isinstance(exclude, str) else list(exclude)
        return [
            n
            for n in self.names()
            if any(fnmatch.fnmatchcase(n, p) for p in patterns)
            and not any(fnmatch.fnmatchcase(n, x) for x in excludes)
        ]

    def resolve(self, spec: str | list[str]) -> list[str]:
        """Comma-separated names or wildcards -> names, in the order given, without repeats.

        `all` means every non-tiny entry. Unknown names raise a did-you-mean UserError.
        """
        items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
        items = [s for s in items if s]
        if not items:
            raise UserError(f"--{self.kind}s is empty: give one or more {self.kind} names")
        out: list[str] = []
        for item in items:
            if item == "all":
                matched = [n for n in self.names() if not n.endswith("_tiny")]
            elif any(ch in item for ch in "*?["):
                matched = self.list(item)
                if not matched:
                    raise UserError(f"--{self.kind}s pattern '{item}' matches no {self.kind}; "
                                    f"available: {', '.join(self.names())}")
            else:
                self.get(item)
                matched = [item]
            out.extend(n for n in matched if n not in out)
        return out


MODELS = Registry("model", MODEL_GROUP, "harness_models")
TASKS = Registry("task", TASK_GROUP, "harness_tasks")


def _entry_points(group: str):
    try:
        return list(importlib.metadata.entry_points(group=group))
    except TypeError:  # Python < 3.10 API
        return list(importlib.metadata.entry_points().get(group, []))


def register_model(
    name: str,
    *,
    family: str,
    paper: str,
    complexity: str,
    defaults: dict,
    task_configs: dict | None = None,
    train_configs: dict | None = None,
    tiny: dict | None = None,
    requires: tuple | list = (),
    probe: Callable[[], str | None] | None = None,
    description: str = "",
    runtime: tuple | list = (),
    published: dict | None = None,
    efficiency_reference: tuple = (),
    fit_length: Callable[[dict, int], dict] | None = None,
    override: bool = False,
):
    """Decorator for a backbone factory. `tiny` (architecture overrides) also registers `name_tiny`.
    `runtime` names the config keys that are execution settings (e.g. `compile`, a kernel choice):
    recorded and shown as a variant, but not part of the architecture's identity. `published` is the
    paper's efficiency figures for this model (e.g. MEGA Table 2's speed and memory ratios at 4K),
    which the efficiency table shows in a column of their own. `efficiency_reference` = (rank, what it
    is) makes the model (not its tiny variant) a reference of the efficiency ratios. `fit_length`
    adapts the config to a benchmark cell's length: (config, seq_len) -> overrides.

    Example::

        @register_model("my_rnn", family="recurrent", paper="...", complexity="O(L)",
                        defaults=dict(d_model=128, n_layers=2), tiny=dict(d_model=32, n_layers=1))
        def my_rnn(d_model, n_layers, **_):
            return MyBackbone(d_model, n_layers)
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if "d_model" not in defaults:
        raise ValueError(f"model '{name}': defaults must include d_model")
    unknown_runtime = [k for k in runtime if k not in defaults]
    if unknown_runtime:
        raise ValueError(f"model '{name}': runtime keys {unknown_runtime} are not in its defaults")

    def decorator(factory):
        origin = f"{factory.__module__}:{factory.__qualname__}"
        if factory.__module__ == "__main__" or factory.__module__.startswith("harness_include_"):
            origin = _caller_origin(depth=2)
        common = dict(
            factory=factory, family=family, paper=paper, complexity=complexity,
            defaults=dict(defaults), task_configs=dict(task_configs or {}),
            train_configs=dict(train_configs or {}), requires=tuple(requires), probe=probe,
            origin=origin, description=description or (inspect.getdoc(factory) or "").split("\n")[0],
            runtime_keys=tuple(runtime), fit_length=fit_length,
            source=plugin_source(factory.__module__, origin),
        )
        MODELS.add(ModelEntry(name=name, published=dict(published or {}),
                              efficiency_reference=tuple(efficiency_reference), **common), override=override)
        if tiny is not None:
            MODELS.add(
                ModelEntry(name=f"{name}_tiny", tiny_of=name, tiny_overrides=dict(tiny), **common),
                override=override,
            )
        return factory

    return decorator


def register_task(name: str, *, override: bool = False):
    """Class decorator for a task (a subclass of `harness.task.Task`)."""

    def decorator(cls):
        from harness.task import TaskOptions

        options = getattr(cls, "Options", None)
        if not (isinstance(options, type) and issubclass(options, TaskOptions)  # decorated itself, frozen:
                and "__dataclass_params__" in vars(options) and options.__dataclass_params__.frozen):
            raise ValueError(f"task '{name}': Options must be a frozen dataclass subclassing "
                             f"harness.task.TaskOptions (e.g. @dataclass(frozen=True) class "
                             f"MyOptions(TaskOptions): ...), got {options!r}")
        cls.name = name
        origin = f"{cls.__module__}:{cls.__qualname__}"
        if cls.__module__.startswith("harness_include_"):
            origin = _caller_origin(depth=2)
        TASKS.add(TaskEntry(name=name, cls=cls, origin=origin, source=plugin_source(cls.__module__, origin)),
                  override=override)
        return cls

    return decorator


def include_file(path: str | Path) -> None:
    """Import a local plugin file (`--include FILE.py`); its decorators register its entries."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--include {path}: no such file; give the path of a Python plugin file")
    if path.suffix != ".py":
        raise UserError(f"--include {path}: expected a .py file")
    MODELS.ensure_loaded()
    TASKS.ensure_loaded()
    module_name = "harness_include_" + re.sub(r"\W", "_", str(path.resolve()))
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except UserError:
        del sys.modules[module_name]
        raise
    except Exception as exc:
        del sys.modules[module_name]
        raise PluginImportError(
            f"--include {path}: the plugin failed to import: {type(exc).__name__}: {exc}") from exc


def load_plugins(includes=()) -> dict:
    """Import every plugin: the built-ins, the entry points and the `--include` files. Returns
    {file: error} for included files that raised on import; those, and entry points that failed,
    are logged as warnings and recorded against the models they would have provided, and the other
    models still run."""
    MODELS.ensure_loaded()
    TASKS.ensure_loaded()
    for source, error in {**MODELS.load_errors, **TASKS.load_errors}.items():
        log.warning("plugin %s failed to load: %s", source, error)
    failed = {}
    for path in includes or ():
        try:
            include_file(path)
        except PluginImportError as exc:
            failed[str(path)] = str(exc)
            log.warning("%s", exc)
    return failed
