"""`ls`: what the registries hold, where each entry comes from, in a terminal 100 columns wide."""

from __future__ import annotations

import textwrap

from harness.registry import MODELS, TASKS
from harness.task import TaskOptions, describe_options

WIDTH = 100  # a terminal's width the listing must fit


def _param_count(model: str, task: str) -> int | None:
    """Parameters of the whole classifier (backbone + harness head) for a task, built on the meta device."""
    import torch

    from harness.heads import build_classifier, count_parameters

    for device in ("meta", "cpu"):  # meta: no memory, no init cost; some inits need real tensors
        try:
            with torch.device(device):
                classifier, *_ = build_classifier(model, task)
            return count_parameters(classifier)
        except Exception:
            continue
    return None


def catalogue(pattern: str = "*", params: bool = False) -> dict:
    """Rows for every model and task matching `pattern` (what `ls --json` prints)."""
    lra_tasks = [t for t in TASKS.names() if TASKS.get(t).spec.lra] or TASKS.names()
    models = []
    for name in MODELS.list(pattern):
        entry = MODELS.get(name)
        ok, reason = entry.availability()
        row = dict(name=name, family=entry.family, complexity=entry.complexity,
                   available="yes" if ok else f"no: {reason}", paper=entry.paper, origin=entry.origin,
                   source=entry.source)
        if params:
            row["params"] = {t: _param_count(name, t) for t in lra_tasks}
        models.append(row)
    tasks = []
    for name in TASKS.list(pattern):
        entry = TASKS.get(name)
        spec = entry.spec
        tasks.append(dict(name=name, length=spec.seq_len, input=spec.input_kind, vocab=spec.vocab_size,
                          classes=spec.num_classes, target=spec.target, dual=spec.dual,
                          splits="/".join(str(spec.splits.get(s, "?")) for s in ("train", "val", "test")),
                          metric=spec.metric, lra="yes" if spec.lra else "no", version=spec.version,
                          description=spec.description, origin=entry.origin, source=entry.source,
                          options=describe_options(entry.cls.Options)))
    return dict(models=models, tasks=tasks, plugin_errors={**MODELS.load_errors, **TASKS.load_errors})


def _count(n) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _table(title: str, header: list[str], rows: list[list[str]], squeeze: int, width: int = WIDTH) -> str:
    """A left-aligned text table; column `squeeze` (free text) is shortened so a line fits `width`."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    others = sum(w for i, w in enumerate(widths) if i != squeeze) + 2 * (len(widths) - 1)
    widths[squeeze] = max(8, min(widths[squeeze], width - others))
    fit = lambda text, w: text if len(text) <= w else text[: w - 1] + "…"  # noqa: E731
    lines = ["  ".join(fit(c, w).ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in [header, *rows]]
    return "\n".join([title, *lines])


def _short_source(source: str) -> str:
    return "built-in" if source.startswith("built-in") else source


def _options_text(tasks: list[dict], width: int) -> str:
    """Each task's own options (the head options every task has are given once), wrapped to `width`."""
    shared = describe_options(TaskOptions)
    lines = [textwrap.fill("every task: " + "; ".join(f"{k}: {v}" for k, v in shared.items()), width,
                           initial_indent="  ", subsequent_indent="    ")]
    for task in tasks:
        own = {k: v for k, v in task["options"].items() if k not in shared}
        if own:
            lines.append(textwrap.fill(f"{task['name']}: " + "; ".join(f"{k}: {v}" for k, v in own.items()),
                                       width, initial_indent="  ", subsequent_indent="    "))
    return "Task options (--task-option TASK.KEY=VALUE)\n" + "\n".join(lines)


def render(listing: dict, width: int = WIDTH) -> str:
    """The plain-text listing: models, then tasks, then the reasons some models are unavailable and
    the plugins that failed to load."""
    parts = []
    models, tasks = listing["models"], listing["tasks"]
    if models:
        if "params" in models[0]:  # parameters per LRA task instead of the descriptive columns
            header = ["name", *models[0]["params"]]
            rows = [[m["name"], *(_count(n) for n in m["params"].values())] for m in models]
            parts.append(_table("Models (parameters of the whole classifier, per task)", header, rows, squeeze=0,
                                width=width))
        else:
            header = ["name", "family", "complexity", "ok", "from", "paper"]
            rows = [[m["name"], m["family"], m["complexity"], m["available"][:3].rstrip(":"),
                     _short_source(m["source"]), m["paper"]] for m in models]
            parts.append(_table("Models", header, rows, squeeze=5, width=width))
        unavailable = [f"{m['name']}: {m['available'][4:]}" for m in models if m["available"] != "yes"]
        if unavailable:
            parts.append("Unavailable here\n" + "\n".join(
                textwrap.fill(line, width, initial_indent="  ", subsequent_indent="    ") for line in unavailable))
    if tasks:
        header = ["name", "length", "input", "vocab", "classes", "target", "dual", "lra", "from", "splits"]
        rows = [[t["name"], str(t["length"]), t["input"], str(t["vocab"]), str(t["classes"]), t["target"],
                 "yes" if t["dual"] else "no", t["lra"], _short_source(t["source"]), t["splits"]] for t in tasks]
        parts.append(_table("Tasks", header, rows, squeeze=8, width=width))
        parts.append(_options_text(tasks, width))
    sources = sorted({x["source"] for x in models + tasks if x["source"].startswith("built-in")})
    if sources:
        parts.append(f"built-in = {', '.join(s.removeprefix('built-in ') for s in sources)}; "
                     f"`ls --json` gives each entry's paper, origin and description")
    errors = listing["plugin_errors"]
    if errors:
        parts.append("Plugins that failed to load\n" + "\n".join(
            textwrap.fill(f"{source}: {error}", width, initial_indent="  ", subsequent_indent="    ")
            for source, error in errors.items()))
    return "\n\n".join(parts)
