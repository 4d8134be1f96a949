"""A `tables.Table` as Markdown, LaTeX or an HTML fragment.

HTML and LaTeX come from a pandas `Styler` over the table's display text: bold through cell styles
(CSS `font-weight` in HTML, `\\textbf` in LaTeX), hover notes through `set_tooltips` (as `title`
attributes), CSS classes through `set_td_classes`. LaTeX uses booktabs rules and is scaled down to
the line width when it is wider (`\\resizebox`, needs graphicx). Markdown comes from
`DataFrame.to_markdown` with an unpadded pipe format, bold cells as `**text**`.
"""

from __future__ import annotations

import hashlib
import html
import re

import pandas as pd
import tabulate
from pandas.io.formats.style import Styler

from harness.errors import UserError
from harness.report.format import NOISY, slug

FORMATS = ("markdown", "latex", "html")
NUMBER = re.compile(rf"^{re.escape(NOISY)}?[\d.]")  # a cell that reads as a number ("~20.0" too)
MUTED = "color: var(--muted); font-style: italic"  # context rows (reference models)
HEADER_CSS = {"avg": "background: var(--avg); border-left: 1px solid #b9c1cc",
              "standin": "background: var(--standin); white-space: normal; max-width: 170px"}
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                 "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                 "^": r"\textasciicircum{}", "±": r"$\pm$", "×": r"$\times$", "–": "--",
                 "≥": r"$\geq$", "≤": r"$\leq$", "·": r"$\cdot$", "†": r"\dag{}", "√": r"$\surd$",
                 "−": "-"}


def latex_escape(text) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def table_id(table) -> str:
    """The HTML id of a table's block: 'table-<title slug>'."""
    return f"table-{slug(table.title) or 'untitled'}"


def _frame(table) -> pd.DataFrame:
    """The display text with the row header's name moved to the columns' name: Styler then shows it
    in the header row's first cell, as the Markdown table does."""
    frame = table.text.copy()
    frame.columns.name, frame.index.name = frame.index.name or "", None
    return frame


def _cell_styles(table, css: str) -> pd.DataFrame:
    """`css` on the bold cells, nothing elsewhere."""
    return table.bold.map(lambda bold: css if bold else "")


# -- Markdown ----------------------------------------------------------------------------------------

def _markdown(table) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    cells = table.text.map(esc).where(~table.bold, table.text.map(lambda v: f"**{esc(v)}**"))
    cells.index = cells.index.map(esc)
    cells.columns = [esc(c) for c in cells.columns]
    cells.index.name = esc(table.text.index.name or "")
    left = set(table.left_columns)  # text columns; numbers align right
    rule = "|" + "|".join([":---"] + [":---" if c in left else "---:" for c in table.text.columns]) + "|"
    row = tabulate.DataRow("| ", " | ", " |")
    pipe = tabulate.TableFormat(lineabove=None, linebelowheader=lambda widths, aligns: rule,
                                linebetweenrows=None, linebelow=None, headerrow=row, datarow=row,
                                padding=0, with_header_hide=None)
    # alignment "" = no padding: the cells stay as written, the rule line says how to align them
    body = cells.to_markdown(tablefmt=pipe, disable_numparse=True, colalign=[""] * (len(cells.columns) + 1))
    out = [f"**{table.title}**", ""] if table.title else []
    out.append(body)
    if table.caption:
        out += ["", f"_{table.caption}_"]
    return "\n".join(out) + "\n"


# -- LaTeX -------------------------------------------------------------------------------------------

def _latex(table) -> str:
    frame = _frame(table)
    frame.columns.name = latex_escape(frame.columns.name)  # Styler writes the name as it is
    styler = Styler(frame, uuid="t")
    styler.format(latex_escape).format_index(latex_escape, axis=0).format_index(latex_escape, axis=1)
    styler.apply(lambda _: _cell_styles(table, "textbf: --rwrap;"), axis=None)
    styler.set_table_styles([{"selector": "small", "props": ":;"}], overwrite=False)
    title, caption = table.title, table.caption
    text = styler.to_latex(
        column_format="l" + "r" * len(table.text.columns), position="ht", position_float="centering",
        hrules=True, label=("tab:" + slug(title)) if title else None,
        caption=latex_escape(f"{title}. {caption}".strip(". ")) if title or caption else None)
    # wider than the text: scaled down to the line width (never up)
    text = text.replace("\\begin{tabular}", "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else"
                                            "\\width\\fi}{!}{%\n\\begin{tabular}", 1)
    return text.replace("\\end{tabular}\n", "\\end{tabular}%\n}\n", 1)


# -- HTML --------------------------------------------------------------------------------------------

def _html(table) -> str:
    frame = _frame(table)
    esc = lambda s: html.escape(str(s), quote=True)  # noqa: E731
    classes = [table.column_classes.get(c, "num") for c in frame.columns]
    context = set(table.context_rows)
    td_classes = pd.DataFrame(
        [[" ".join([cls] + ([] if NUMBER.match(str(v)) else ["status"]) + (["ref"] if row in context else []))
          for cls, v in zip(classes, values)] for row, values in zip(frame.index, frame.to_numpy())],
        index=frame.index, columns=frame.columns)
    notes = {row: esc(note) for row, note in table.row_notes.items()}
    # a unique, stable id: Styler's cell styles are keyed by it, and a page holds many tables
    uuid = hashlib.sha1((table.title + table.caption + frame.to_json()).encode()).hexdigest()[:10]
    styler = Styler(frame, uuid=uuid)
    styler.format(escape="html")
    styler.format_index(lambda v: f'<span title="{notes[v]}">{esc(v)}</span>' if v in notes else esc(v), axis=0)
    styler.format_index(lambda c: esc(c).replace("_", "_<wbr>"), axis=1)  # long names may wrap
    styler.set_td_classes(td_classes)
    styler.set_tooltips(table.tips.map(lambda t: esc(t) if t else ""), as_title_attribute=True)
    styler.apply(lambda _: _cell_styles(table, "font-weight: bold"), axis=None)
    styler.map_index(lambda row: MUTED if row in context else "", axis=0)
    styler.map_index(lambda c: HEADER_CSS.get(table.column_classes.get(c), ""), axis=1)
    out = [f'<div class="table-block" id="{table_id(table)}">']
    if table.title:
        out.append(f"<h3>{esc(table.title)}</h3>")
    out.append('<div class="table-scroll">')
    out.append(styler.to_html(table_attributes='class="results"').strip())
    out.append("</div>")
    if table.caption:
        out.append(f'<p class="caption">{esc(table.caption)}</p>')
    out.append("</div>")
    return "\n".join(out) + "\n"


def render(table, fmt: str = "markdown") -> str:
    """One table as Markdown, LaTeX (booktabs) or an HTML fragment, with title and caption."""
    fmt = {"md": "markdown", "tex": "latex"}.get(fmt, fmt)
    if fmt == "markdown":
        return _markdown(table)
    if fmt == "latex":
        return _latex(table)
    if fmt == "html":
        return _html(table)
    raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
