"""Built-in task plugins: importing this package registers every task family (one module or package each)."""

from harness_tasks import image, listops, pathfinder, retrieval, synthetic, text  # noqa: F401
