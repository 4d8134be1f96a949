"""The self-contained HTML report: environment banner, tables, plots, methodology and provenance
in one file that opens offline (plotly.js is inlined once; figures are `Plotly.newPlot` calls), plus
Markdown and LaTeX copies of the tables next to it and, when kaleido and a Chrome/Chromium are
installed, PNG copies of the figures.

The page is rendered by jinja2 with autoescaping (`templates/report.html`); only fragments this
package builds itself (tables escaped by `render.render`, plotly's figure divs) are marked safe.
No script or stylesheet is loaded from anywhere else.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import os
import re
import shutil
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from harness.errors import UserError
from harness.records import LRA_KINDS
from harness.report import plots, tables
from harness.report.format import GIB, first_line, get, natural
from harness.report.render import render, table_id
from harness.report.select import accuracy_column, prepare, provenance_text, row_name, task_order
from harness.store import RunStore, load_records

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
TITLE = "Long-sequence benchmark report"
TABLES_HEADING = "Benchmark tables"  # first line of the .md / .tex copies; check_report_path looks for it
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
README = "README.md"  # a results folder's notes (missing revisions, removed records): shown under Provenance
README_MAX_CHARS = 200_000  # a larger file is cut there, with a note
IMAGES_KALEIDO_MISSING = ("static images skipped: kaleido is not installed "
                          "(pip install 'lsm-harness[images]' for PNG copies of the plots)")
IMAGES_BROWSER_MISSING = ("static images skipped: no Chrome/Chromium found "
                          "(install chromium or set BROWSER_PATH for PNG copies of the plots)")


# -- selecting runs ---------------------------------------------------------------------------------

def resolve_runs(results_dir, runs: list[str] | None) -> list[str]:
    """The run ids to report (all when `runs` is empty); an unknown id is a UserError naming the
    available runs."""
    store = RunStore(results_dir)
    available = store.run_ids()
    if not runs:
        return available
    wanted = [r.strip() for item in runs for r in str(item).split(",") if r.strip()]
    missing = [r for r in wanted if r not in available]
    if missing:
        shown = ", ".join(available[-20:]) + (f" (and {len(available) - 20} earlier)"
                                              if len(available) > 20 else "")
        raise UserError(f"run {', '.join(missing)} not found in {store.root}; available runs: "
                        f"{shown or 'none (run `python -m harness run` first)'}", exit_code=2)
    return list(dict.fromkeys(wanted))


# -- banner, methodology and provenance -------------------------------------------------------------

def _gib(n) -> str:
    return f"{n / GIB:.0f} GiB" if isinstance(n, (int, float)) and n else "?"


def when(stamp) -> str:
    """ISO time -> '2026-03-01 09:00 UTC' (the raw text when it does not parse)."""
    if not stamp:
        return "?"
    try:
        moment = dt.datetime.fromisoformat(str(stamp))
    except ValueError:
        return str(stamp)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def environment_summary(manifest: dict) -> dict:
    """The banner facts of one run, as short strings."""
    env = manifest.get("environment") or {}
    gpus = env.get("gpus") or []
    if gpus:
        first = gpus[0]
        gpu = f"{first.get('name')} ({_gib(first.get('memory_total_bytes'))}, driver {first.get('driver')})"
        if len(gpus) > 1:
            gpu += f" ×{len(gpus)}"
    elif env.get("cuda_device"):
        gpu = env["cuda_device"]
    else:
        gpu = "none (CPU only)"
    sha = manifest.get("git_sha") or (env.get("git") or {}).get("sha")
    dirty = manifest.get("git_dirty")
    if dirty is None:
        dirty = (env.get("git") or {}).get("dirty")
    git = (sha[:12] if sha else "unknown") + (" (dirty: uncommitted changes)" if dirty else "")
    cpu = env.get("cpu") or "?"
    if env.get("cpu_count"):
        cpu += f", {env['cpu_count']} cores"
    if env.get("torch_threads"):
        cpu += f", {env['torch_threads']} torch threads"
    if env.get("ram_bytes"):
        cpu += f", {_gib(env['ram_bytes'])} RAM"
    return {
        "run_id": manifest.get("run_id", "?"), "status": manifest.get("status") or "?",
        "gpu": gpu, "cpu": cpu, "torch": env.get("torch") or "?",
        "cuda": env.get("cuda") or "none", "cudnn": env.get("cudnn") or "none",
        "python": env.get("python") or "?", "platform": env.get("platform") or "?",
        "host": env.get("hostname") or "?", "git": git, "git_sha": sha, "git_dirty": bool(dirty),
        "harness": manifest.get("harness_version") or env.get("harness_version") or "?",
        "started": when(manifest.get("started")),
        "finished": when(manifest.get("finished")) if manifest.get("finished") else "not finished",
        "command": " ".join(manifest.get("command") or []) or "?",
        "config": json.dumps(manifest.get("config") or {}, indent=2, sort_keys=True, default=str),
        "packages": ", ".join(f"{k} {v}" for k, v in sorted((env.get("packages") or {}).items()) if v),
    }


def banner_line(manifest: dict) -> str:
    """One line for text output: 'run ID: GPU · CPU · torch · CUDA · git'."""
    e = environment_summary(manifest)
    return (f"run {e['run_id']} ({e['started']}): GPU {e['gpu']} · CPU {e['cpu']} · torch {e['torch']} · "
            f"CUDA {e['cuda']} · git {e['git']}")


def methodology(df: pd.DataFrame, manifests: list[dict]) -> list[str]:
    """The measurement protocol in words, with the numbers these runs actually used."""
    speed = df[df["kind"] == "speed"]
    warm = sorted({int(v) for v in speed["timing.n_warmup"].dropna()})
    iters = sorted({int(v) for v in speed["timing.n_iters"].dropna()})
    join = lambda values, default: "/".join(map(str, values)) if values else default  # noqa: E731
    devices = sorted(set(speed["device"].dropna()))
    configs = [m.get("config") or {} for m in manifests]
    isolation = sorted({str(c.get("isolation")) for c in configs if c.get("isolation")})
    threads = sorted({str(c.get("threads")) for c in configs if c.get("threads")})
    text = [
        "A speed cell is (model, task configuration, sequence length, batch, dtype, mode). "
        "train_step = forward + backward + optimizer step (the papers' training speed); "
        "forward = inference.",
        "Inputs, model and optimizer are built before timing. Each cell runs "
        f"{join(warm, 'at least 3')} warm-up iterations, then {join(iters, 'at least 10')} timed "
        "iterations. Tables show the median; time plots add the p20-p80 spread as error bars; the "
        "stored records keep every raw sample.",
        "GPU timing: one CUDA event pair per iteration, synchronised once at the end. CPU timing: "
        "time.perf_counter around each iteration with a fixed torch.set_num_threads"
        + (f" ({', '.join(threads)} threads)" if threads else "") + ".",
        "Peak memory on GPU: torch.cuda.reset_peak_memory_stats() after the build, then "
        "torch.cuda.max_memory_allocated() (activations, gradients and optimizer state; allocator "
        "cache excluded), with max_memory_reserved() and the NVML process footprint stored beside it. "
        "On CPU: the increase of the process's peak resident set during the timed iterations.",
        "Isolation: on GPU every cell runs in a fresh subprocess by default, so peak statistics, "
        "allocator fragmentation and a poisoned CUDA context cannot leak into the next cell"
        + (f" (isolation used: {', '.join(isolation)})" if isolation else "") + ".",
        "Lengths are swept in ascending order. A cell that runs out of memory is recorded as OOM and "
        "the model's longer lengths as skipped; any other exception, or a non-finite output or loss, "
        "is recorded as FAIL with its message (hover a cell to read it). A missing number is never 0.",
        "Accuracy: test accuracy of each (row, task, seed), where a row is a model variant (the model "
        "and the settings changed from its registered configuration). A cell shows the mean ± sample "
        "standard deviation over seeds with the seed count n and the 95% Student-t interval of the mean; "
        "the test set's binomial standard error, 100·√(p(1−p)/N), is in the caption and each cell's "
        "hover note. Bold marks the best mean among rows with at least two seeds and every row not "
        "separable from it (Welch's t-test p ≥ 0.05, or a gap below twice the test-set standard "
        "error); with a single seed nothing is ranked.",
        "Reference rows (ref: majority class; ref: a linear model on the raw input) are fitted by the "
        "harness on the same splits: context for what the sequence models learned, never ranked or "
        "averaged. Under an lr grid each cell shows the learning rate with the best mean validation "
        "accuracy and says which.",
        "Only LRA-eligible results (paper scale, on the task's whole official data or a faithful "
        "regeneration) enter the LRA columns and the LRA average; a smoke or small run, a subset, user "
        "data or a stand-in data set gets its own column naming provenance, scale and size. LRA is a "
        "diagnostic of long-range modelling, not a proof of it.",
        "Speed tables are sliced by task configuration, batch, dtype, device, mode and the device's "
        "name, so two GPUs never share a table; a time whose p80/p20 exceeds 1.5 is marked noisy (~), "
        "and times whose p20-p80 ranges overlap the fastest's are bold with it (about equal).",
    ]
    if devices:
        text.append(f"Devices measured: {', '.join(devices)}.")
    return text


def _not_counted(row) -> str:
    """Why an accuracy record of an LRA task is not an LRA number, from its typed fields."""
    reasons = []
    scale = get(row, "scale")
    if scale != "paper":
        reasons.append(f"{scale} scale" if scale else "scale not recorded")
    kind = get(row, "provenance.kind")
    if kind is None:
        reasons.append("provenance unknown")
    elif kind not in LRA_KINDS:
        reasons.append(f"{kind} data")
    elif get(row, "provenance.subset"):
        reasons.append("a subset")
    return "no (" + ", ".join(reasons or ["not LRA data"]) + ")"


def data_origins(df: pd.DataFrame) -> list[dict]:
    """Per task, provenance and scale: the table column, whether it counts as an LRA number, and
    which rows (model variants) used it."""
    acc = df[df["kind"] == "accuracy"]
    out = []
    keys = ["task", "provenance.kind", "provenance.source", "provenance.subset", "scale"]
    for _, group in acc.groupby(keys, dropna=False, sort=True):
        first = group.iloc[0]
        label, group_name = accuracy_column(first)
        rows = {row_name(m, lab) for m, lab in zip(group["model"], group["label"])}
        out.append({
            "task": first["task"], "provenance": provenance_text(first) or "unknown",
            "scale": get(first, "scale") or "not recorded", "column": label,
            "counted": ("yes" if group_name == "lra" else
                        "no (not an LRA task)" if group_name == "other" else _not_counted(first)),
            "version": ", ".join(sorted({str(v) for v in group["task_version"].dropna()})) or "?",
            "models": ", ".join(sorted(rows, key=natural)),
        })
    return sorted(out, key=lambda o: (task_order(o["task"]), str(o["task"]), o["provenance"], o["scale"]))


# -- a results folder's notes ----------------------------------------------------------------------

_ITEM = re.compile(r"^\s{0,3}([-*+]|\d{1,9}[.)])\s+(.*)$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_RULE = re.compile(r"^\s{0,3}\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")  # a table's |---|---|
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", re.S)
_EM = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])", re.S)


def _inline(text: str) -> str:
    """Escaped HTML of one span of Markdown: `code`, **bold**, *emphasis* and links; a link's
    target becomes an href only when it is http(s), else it is printed after the text."""
    out, at = [], 0
    for match in _CODE_SPAN.finditer(text):
        out.append(_inline_plain(text[at:match.start()]))
        out.append(f"<code>{escape(match.group(2).strip())}</code>")
        at = match.end()
    out.append(_inline_plain(text[at:]))
    return "".join(out)


def _inline_plain(text: str) -> str:
    def link(match):
        label, target = match.group(1), match.group(2)
        if re.match(r"https?://", target):
            return f'<a href="{target}" rel="noopener noreferrer">{label}</a>'
        return f"{label} ({target})"

    text = _LINK.sub(link, str(escape(text)))  # escaped first: raw HTML in the file stays text
    text = _STRONG.sub(r"<strong>\1</strong>", text)
    return _EM.sub(r"<em>\1</em>", text)


def _table_cells(line: str) -> list[str]:
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)]


def _code_block(body: list[str]) -> str:
    code = "\n".join(body)
    return f"<pre><code>{escape(code)}</code></pre>"


def _starts_block(lines: list[str], i: int) -> bool:
    line = lines[i]
    return bool(_HEADING.match(line) or _ITEM.match(line) or line.lstrip().startswith("```")
                or (line.lstrip().startswith("|") and i + 1 < len(lines) and _RULE.match(lines[i + 1])))


def render_markdown(text: str, heading_offset: int = 3) -> Markup:
    """A small, safe subset of Markdown as HTML, enough for a results folder's README: headings
    (shifted down by `heading_offset` levels to sit under the report's own), paragraphs, bullet and
    numbered lists with continuation lines, indented and fenced code blocks, pipe tables, `code`,
    **bold**, *emphasis* and http(s) links. The source is escaped before any markup is added, so
    HTML in the file shows as text and nothing it names is loaded."""
    lines = text.replace("\t", "    ").splitlines()
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.lstrip().startswith("```"):  # fenced code, up to the closing fence (or the end)
            fence, body = line.lstrip()[:3], []
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith(fence):
                body.append(lines[i])
                i += 1
            i += 1
            out.append(_code_block(body))
        elif _HEADING.match(line):
            hashes, title = _HEADING.match(line).groups()
            level = min(len(hashes) + heading_offset, 6)
            out.append(f"<h{level}>{_inline(title)}</h{level}>")
            i += 1
        elif line.startswith("    "):  # indented code: indented and blank lines, 4 spaces removed
            body = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            out.append(_code_block(body))
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and _RULE.match(lines[i + 1]):
            head = _table_cells(line)
            rows, i = [], i + 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_table_cells(lines[i]))
                i += 1
            out.append('<div class="table-scroll"><table class="plain"><thead><tr>'
                       + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                                 for row in rows)
                       + "</tbody></table></div>")
        elif _ITEM.match(line):
            numbered = _ITEM.match(line).group(1)[0].isdigit()
            items = []
            while i < len(lines):
                match = _ITEM.match(lines[i])
                if match and match.group(1)[0].isdigit() == numbered:
                    items.append([match.group(2)])
                    i += 1
                elif lines[i].strip() and not _starts_block(lines, i):  # continuation (indented or lazy)
                    items[-1].append(lines[i].strip())
                    i += 1
                elif (not lines[i].strip() and i + 1 < len(lines) and _ITEM.match(lines[i + 1])
                      and _ITEM.match(lines[i + 1]).group(1)[0].isdigit() == numbered):
                    i += 1  # a blank line between two items of the same list
                else:
                    break
            tag = "ol" if numbered else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{_inline(' '.join(item))}</li>" for item in items)
                       + f"</{tag}>")
        else:  # a paragraph: up to a blank line or the start of another block
            body = [line.strip()]
            i += 1
            while i < len(lines) and lines[i].strip() and not _starts_block(lines, i):
                body.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(body))}</p>")
    return Markup("\n".join(out))


def results_readmes(results_dir, run_ids: list[str]) -> list[dict]:
    """The README.md of the results folder and of every folder that holds a reported run below
    it (a folder of run folders' folders, such as results/reference), as
    {"path": shown path, "html": Markup}. An unreadable file is named with its reason, never fatal."""
    root = Path(results_dir)
    folders = [root]
    for run_id in run_ids:  # run ids that name a subfolder path ('h100-2026-11-22/20261122-...')
        parent = (root / run_id).parent
        chain = []
        while parent != root and root in parent.parents:
            chain.append(parent)
            parent = parent.parent
        folders += reversed(chain)
    try:  # a subfolder holding one of the runs, when the run ids are bare
        subfolders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    except OSError:
        subfolders = []
    folders += [sub for sub in subfolders if any((sub / r).is_dir() for r in run_ids)]
    out = []
    for folder in dict.fromkeys(folders):
        path = folder / README
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            out.append({"path": str(path), "html": Markup(f"<p>cannot be read ({escape(exc.strerror or exc)})</p>")})
            continue
        cut = len(text) > README_MAX_CHARS
        rendered = render_markdown(text[:README_MAX_CHARS])
        if cut:
            rendered += Markup(f"<p><em>(cut at {README_MAX_CHARS:,} characters; the file is longer)</em></p>")
        out.append({"path": str(path), "html": rendered})
    return out


# -- static images ----------------------------------------------------------------------------------

def find_browser() -> str | None:
    """A Chrome/Chromium for kaleido: BROWSER_PATH, else a known name on PATH."""
    path = os.environ.get("BROWSER_PATH")
    if path and Path(path).is_file():
        return path
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def log_image_message(message: str) -> None:
    """Log an export message: a missing optional part (kaleido, a browser) is an info `note:` (the
    report itself is complete), a failed export a warning."""
    if message in (IMAGES_KALEIDO_MISSING, IMAGES_BROWSER_MISSING):
        log.info("note: %s", message)
    else:
        log.warning("%s", message)


def export_images(figures: list[tuple], out_dir: Path) -> tuple[list[Path], str | None]:
    """PNG copies of the figures through kaleido (one browser for all). Returns (paths, message);
    the message says in one line why images were skipped, or None."""
    if not figures:
        return [], None
    if importlib.util.find_spec("kaleido") is None:
        return [], IMAGES_KALEIDO_MISSING
    browser = find_browser()
    if browser is None:
        return [], IMAGES_BROWSER_MISSING
    import plotly.io as pio

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{fig_id}.png" for fig_id, _, _ in figures]
    previous = os.environ.get("BROWSER_PATH")
    os.environ["BROWSER_PATH"] = browser  # kaleido's choreographer reads it
    try:
        pio.write_images([fig for _, _, fig in figures], paths, format="png", scale=2)
    except Exception as exc:  # an export problem must not cost the report
        return [], f"static images skipped: kaleido failed ({first_line(exc, type(exc).__name__)})"
    finally:
        if previous is None:
            os.environ.pop("BROWSER_PATH", None)
        else:
            os.environ["BROWSER_PATH"] = previous
    return paths, None


# -- the report -------------------------------------------------------------------------------------

def _text_copy(table_list: list, fmt: str, banners: list[str]) -> str:
    if fmt == "markdown":
        head = f"# {TABLES_HEADING}\n\n" + "".join(f"- {b}\n" for b in banners) + "\n"
        return head + "\n".join(render(t, "markdown") for t in table_list)
    head = (f"% {TABLES_HEADING}; needs \\usepackage{{booktabs}} and \\usepackage{{graphicx}}\n"
            + "".join(f"% {b}\n" for b in banners) + "\n")
    return head + "\n".join(render(t, "latex") for t in table_list)


def default_report_path(run_ids: list[str]) -> Path:
    """reports/report-<latest run id>.html, relative to the working directory."""
    return Path("reports") / f"report-{run_ids[-1] if run_ids else 'empty'}.html"


def _written_by_us(path: Path, marker: str) -> bool:
    """Whether an existing file is an earlier copy of this report (so replacing it loses nothing)."""
    with open(path, "rb") as f:
        return marker.encode() in f.read(4096)


def check_report_path(out_path: Path, results_dir) -> None:
    """Refuse an --out whose writing would destroy results or other files, or lose the report.

    The page and its `.md` / `.tex` copies share the stem, so only an `.html` name keeps the three
    apart; inside the results folder they could replace a run's files; an existing file is replaced
    only when it is an earlier copy of this report."""
    if out_path.resolve().is_relative_to(Path(results_dir).resolve()):
        raise UserError(f"--out {out_path}: inside --results-dir {results_dir}, where it could replace "
                        f"stored results; write the report elsewhere, e.g. reports/NAME.html")
    if out_path.suffix.lower() != ".html":
        raise UserError(f"--out {out_path}: expected a name ending in .html (the .md and .tex copies of "
                        f"the tables go beside it), e.g. reports/NAME.html")
    for path, marker in ((out_path, f"<title>{TITLE}"), (out_path.with_suffix(".md"), f"# {TABLES_HEADING}"),
                         (out_path.with_suffix(".tex"), f"% {TABLES_HEADING}")):
        try:
            ours = not path.exists() or (path.is_file() and _written_by_us(path, marker))
        except OSError as exc:
            raise UserError(f"--out {out_path}: cannot read {path} ({exc.strerror or exc})", exit_code=1)
        if not ours:
            raise UserError(f"--out {out_path}: {path} exists and is not an earlier copy of this report; "
                            f"move it away or choose another --out")


def write_report(results_dir, runs: list[str] | None, out_path=None, length: int = 4096,
                 aggregate: bool = False, images: bool | None = None, quiet: bool = False) -> Path:
    """Write the HTML report of `runs` (all runs when None) to `out_path` (None: the default
    `reports/report-<latest run id>.html`), with `<name>.md` and `<name>.tex` copies of the
    tables beside it. `images`: PNGs of the figures via kaleido (None = when kaleido and a
    browser are available; otherwise a one-line note, logged). An `out_path` that
    `check_report_path` refuses is a UserError, raised before any work."""
    if out_path is not None:
        check_report_path(Path(out_path), results_dir)
    run_ids = resolve_runs(results_dir, runs)
    records = load_records(results_dir, run_ids or None)
    if records.empty:
        raise UserError(f"no results in {results_dir}: nothing to report; run `python -m harness run` "
                        f"first or point --results-dir at a results folder", exit_code=1)
    df = prepare(records)
    run_ids = [r for r in run_ids if r in set(df["run_id"])] or run_ids
    manifests = RunStore(results_dir).manifests(run_ids, warn=False)  # load_records warned already
    summaries = [environment_summary(m) for m in manifests]

    table_list = tables.all_tables(records, length=length, aggregate=aggregate)
    figures = plots.report_figures(records, length=length, aggregate=aggregate)

    out_path = Path(out_path) if out_path else default_report_path(run_ids)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out_path}: cannot create its folder ({exc.strerror or exc})", exit_code=1)
    banners = [banner_line(m) for m in manifests]
    from plotly.offline import get_plotlyjs

    plot_config = {"displaylogo": False, "responsive": True,
                   "toImageButtonOptions": {"format": "png", "scale": 2}}
    figure_html = [{"id": fig_id, "title": title,
                    "html": Markup(fig.to_html(full_html=False, include_plotlyjs=False, div_id=fig_id,
                                               config=plot_config, default_height=f"{plots.HEIGHT}px"))}
                   for fig_id, title, fig in figures]
    sections = [{"id": table_id(t), "title": t.title, "html": Markup(render(t, "html"))} for t in table_list]
    template = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                           autoescape=select_autoescape(["html"])).get_template("report.html")
    latest = summaries[-1] if summaries else environment_summary({})
    page = template.render(
        title=TITLE,
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        latest=latest, runs=summaries, n_records=len(df),
        n_models=df["label"].nunique(), models=sorted(set(df["label"].dropna()), key=natural),
        tables=sections, figures=figure_html, methodology=methodology(df, manifests),
        origins=data_origins(df), length=length, aggregate=aggregate,
        readmes=results_readmes(results_dir, run_ids),
        plotlyjs=Markup(get_plotlyjs()),
    )
    try:
        out_path.write_text(page, encoding="utf-8")
        out_path.with_suffix(".md").write_text(_text_copy(table_list, "markdown", banners), encoding="utf-8")
        out_path.with_suffix(".tex").write_text(_text_copy(table_list, "latex", banners), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--out {out_path}: cannot write the report ({exc.strerror or exc})", exit_code=1)

    if images is not False:
        _, message = export_images(figures, out_path.with_name(out_path.stem + "-figures"))
        if message and not quiet:
            log_image_message(message)
    return out_path
