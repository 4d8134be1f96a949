"""Built-in task plugins: importing this package registers every task family (one file each)."""

from tasks import listops  # noqa: F401
