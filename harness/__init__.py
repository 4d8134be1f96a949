"""Benchmarking harness for long-sequence models (MEGA, MEGA-chunk and baselines on LRA tasks).

Python API: `harness.run(harness.RunConfig(...))` runs what `python -m harness run` runs and returns
the stored records (harness/runner.py)."""

from harness.version import __version__  # noqa: E402
from harness.config import RunConfig  # noqa: E402
from harness.runner import RunInterrupted, RunResult, run  # noqa: E402

__all__ = ["RunConfig", "RunInterrupted", "RunResult", "run", "__version__"]
