"""How sure an accuracy cell is (shared/spec/statistics.md): mean, sample sd, the 95% Student-t
interval over seeds, the test set's binomial standard error, and the rule that bolds a column's
best row and every row not separable from it (Welch p >= 0.05, or a gap below 2 x the test-set s.e.).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

ALPHA = 0.05  # Welch's test: p >= ALPHA = not separable


@dataclass
class Summary:
    """One accuracy cell: the seeds' test accuracies (in %) and what follows from them."""

    values: np.ndarray  # per-seed test accuracy, %
    seeds: list = field(default_factory=list)
    mean: float | None = None
    sd: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    se_test: float | None = None  # binomial standard error of the test set, points
    n_test: int | None = None
    run_ids: list = field(default_factory=list)
    failures: dict = field(default_factory=dict)  # status -> count
    error: str | None = None
    lr: float | None = None  # the learning rate shown (chosen on validation under a grid)
    lr_scores: dict = field(default_factory=dict)  # lr -> mean validation accuracy (%), grid only
    stopped: list = field(default_factory=list)  # (seed, steps, reason) of seeds cut short
    n_params: list = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    def set_interval(self) -> None:
        """The 95% Student-t interval of `mean` from `sd` and n, cut to [0, 100] (an accuracy)."""
        half = float(stats.t.ppf(0.975, self.n - 1)) * self.sd / math.sqrt(self.n)
        self.ci_low, self.ci_high = max(self.mean - half, 0.0), min(self.mean + half, 100.0)


def summarise(values, n_test=None) -> Summary:
    """mean, sample sd, the 95% Student-t interval over seeds and the test-set standard error."""
    values = np.asarray(values, dtype=float)
    summary = Summary(values=values)
    if len(values) == 0:
        return summary
    summary.mean = float(values.mean())
    if len(values) > 1:
        summary.sd = float(values.std(ddof=1))
        summary.set_interval()
    if n_test:
        p = min(max(summary.mean / 100.0, 0.0), 1.0)
        summary.n_test = int(n_test)
        summary.se_test = 100.0 * math.sqrt(p * (1.0 - p) / n_test)
    return summary


def welch_p(a, b) -> float:
    """Two-sided p of Welch's t-test; with no spread in either group, 1 when the means are equal
    and 0 otherwise."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.std() == 0 and b.std() == 0:
        return 1.0 if np.isclose(a.mean(), b.mean()) else 0.0
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return 1.0 if math.isnan(p) else p


def tied(a: Summary, best: Summary) -> bool:
    """Not separable from the best (statistics.md "Ranking and bold"): Welch p >= 0.05, or a gap
    below 2 x the test-set standard error (the larger of the two)."""
    se = [s.se_test for s in (a, best) if s.se_test is not None]
    if se and best.mean - a.mean < 2.0 * max(se):
        return True
    return welch_p(a.values, best.values) >= ALPHA


def rank(summaries: dict) -> tuple[list, str]:
    """(rows to bold, why not) for one column of model rows: the best mean among rows with n >= 2
    and every row tied with it; nothing when a row has a single seed ('single seed') or fewer
    than two rows have a number."""
    measured = {row: s for row, s in summaries.items() if s.n >= 1}
    if any(s.n == 1 for s in measured.values()):
        return [], "single seed"
    if len(measured) < 2:
        return [], "one row"
    best = max(measured, key=lambda r: measured[r].mean)
    return [best] + [r for r, s in measured.items() if r != best and tied(s, measured[best])], ""
