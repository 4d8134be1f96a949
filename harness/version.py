"""The harness version: one place, read by the package and by every record's environment."""

__version__ = "0.1.0"
