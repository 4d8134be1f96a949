"""How numbers and statuses read in every table, plot hover and comparison of the reports.

Precision (harness.md "Tables and reports", measurement.md): ms to 3 significant digits; memory
always in GiB (one unit in every table), 2 decimals from 0.1 GiB up and 2 significant digits below;
accuracy to 1 decimal, ratios to 2 significant digits. A missing number is text (`OOM`, `FAIL`,
`skipped`, `n/a`, `–`), never 0. Also here: the small value tests every report module needs
(`missing`, `get`, `number`, `plain`) and the natural sort key of row labels.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from harness import errors
from harness.registry import natural_key

GIB = 1024 ** 3
# Every memory cell of every table in one unit, whatever the values (a table that switched to MiB
# for small CPU peaks would put 500 beside 0.53 for the same kind of cell); `fmt_mem` keeps the
# digits of small values.
MEMORY_UNIT = ("GiB", GIB)
DASH = "–"  # a cell that was never measured
NOISY = "~"  # prefix of a speed cell whose p80/p20 exceeds NOISY_SPREAD
NOISY_SPREAD = 1.5
STOPPED = "†"  # suffix of an accuracy cell with a seed stopped by a time budget or timeout
STATUS_TEXT = {"oom": "OOM", "error": "FAIL", "skipped": "skipped", "unavailable": "n/a"}


# -- values ------------------------------------------------------------------------------------------

def missing(value) -> bool:
    """None, NaN or pandas' NA (a list or dict is a value)."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def get(row, key):
    """`row[key]` of a record (Series or dict), None when absent or missing."""
    value = row.get(key) if hasattr(row, "get") else None
    return None if missing(value) else value


def number(value) -> float | None:
    """A plain float for JSON (None for a missing or non-finite value)."""
    if missing(value):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def plain(value):
    """numpy scalars, arrays and tuples as JSON-ready Python values (NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return number(value)
    return None if missing(value) else value


def natural(value) -> list:
    """Sort key of a row label or any value: `mega2` before `mega10` (harness.registry.natural_key)."""
    return natural_key(str(value))


def slug(text: str) -> str:
    """'Time (ms) by sequence length' -> 'time-ms-by-sequence-length' (ids and file names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def first_line(text, default: str = "", limit: int | None = None) -> str:
    """The first non-empty line of an error message (`default` when there is none), cut to `limit`."""
    line = ("" if missing(text) else errors.first_line(text)) or default
    return line[:limit] if limit else line


# -- numbers -----------------------------------------------------------------------------------------

def fmt_sig(value, digits: int = 3) -> str:
    """`value` to `digits` significant digits in fixed notation (289, 30.4, 1.00, 0.0123)."""
    if value is None or not np.isfinite(value):
        return DASH
    if value == 0:
        return "0"
    rounded = float(f"{value:.{digits}g}")  # round first so 9.996 -> 10.0, not 10.00
    decimals = max(digits - 1 - math.floor(math.log10(abs(rounded))), 0)
    return f"{rounded:.{decimals}f}"


def fmt_ms(value) -> str:
    return fmt_sig(value, 3)


def fmt_ratio(value) -> str:
    return fmt_sig(value, 2) + "×" if value is not None and np.isfinite(value) else DASH


def fmt_count(value) -> str:
    """A parameter count: 812, 31.2K, 3.36M, 1.10G."""
    if value is None or not np.isfinite(value):
        return DASH
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return fmt_sig(value / factor, 3) + suffix
    return str(int(value))


def fmt_lr(value) -> str:
    """6.7e-4, 2e-3 (a learning rate, two significant digits, short exponent)."""
    if value is None or not np.isfinite(value):
        return DASH
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def fmt_mem(value, unit: tuple[str, float] = MEMORY_UNIT) -> str:
    """Bytes in `unit` (GiB): 2 decimals from 0.1 up (56.73, 0.53), 2 significant digits below
    (0.048, 0.0012), so a small CPU peak never reads 0.00."""
    if value is None or not np.isfinite(value):
        return DASH
    scaled = value / unit[1]
    if scaled == 0:
        return "0"
    if abs(scaled) >= 0.1:
        return f"{scaled:.2f}"
    return fmt_sig(scaled, 2)


def length_label(length) -> str:
    """1024 -> '1K', 16384 -> '16K', 300 -> '300'."""
    length = int(length)
    return f"{length // 1024}K" if length >= 1024 and length % 1024 == 0 else str(length)


def status_text(status) -> str:
    """A record's status as a cell reads it: OOM, FAIL, skipped, n/a (– when there is none)."""
    return STATUS_TEXT.get(status, DASH if missing(status) else str(status))
