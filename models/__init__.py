"""Built-in model plugins: importing this package registers every family (one file each)."""

from models import linear_attention, mamba, mega, s4, transformer  # noqa: F401
