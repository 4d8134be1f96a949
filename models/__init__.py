"""Built-in model plugins: importing this package registers every family (one file each)."""

from models import transformer  # noqa: F401
