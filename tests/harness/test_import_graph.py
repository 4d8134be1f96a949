"""The import graph of the project's own modules: the harness knows no model or task (they arrive
through the registry), nothing but the entry points imports a CLI, and no module imports itself
back through a chain of others (lazy, in-function imports included: a cycle is a design knot even
when Python happens to resolve it)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Import package -> folder, as pyproject.toml's package-dir installs them.
PACKAGES = {"harness": REPO / "harness", "harness_models": REPO / "models", "harness_tasks": REPO / "tasks"}
CLIS = {"harness.cli", "harness.report.cli"}
CLI_IMPORTERS = {"harness.__main__", "harness.cli"}  # the entry points may import the CLIs


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules that `name` imports anywhere in its file (relative imports resolved; `from
    package import module` counts as importing that module)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
            # `from package import module` imports the module; the package counts only when a name
            # is taken from its __init__.
            targets = submodules + ([base] if len(submodules) < len(node.names) else [])
        else:
            continue
        out |= {t for t in targets if t in MODULES and t != name}
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_graph_sees_the_project():
    # Guards the test itself: the scan must find the packages and real edges between them.
    assert {"harness.registry", "harness_models.mega", "harness_tasks.text"} <= set(MODULES)
    assert "harness.registry" in GRAPH["harness_models.mega"]
    assert "harness.task" in GRAPH["harness_tasks.text"]


def test_harness_imports_no_model_or_task():
    offenders = {name: sorted(t for t in targets if t.split(".")[0] in ("harness_models", "harness_tasks"))
                 for name, targets in GRAPH.items() if name.split(".")[0] == "harness"}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_only_the_entry_points_import_a_cli():
    offenders = {name: sorted(targets & CLIS) for name, targets in GRAPH.items()
                 if name not in CLI_IMPORTERS and targets & CLIS}
    assert not offenders, offenders


def _cycle() -> list[str] | None:
    """One import cycle as a list of module names, or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    monkeypatch.setitem(GRAPH, "harness.errors", GRAPH["harness.errors"] | {"harness.registry"})
    assert _cycle() is not None
