"""Benchmarking harness for long-sequence models (MEGA, MEGA-chunk and baselines on LRA tasks)."""

__version__ = "0.1.0"
