"""Built-in model plugins: importing this package registers every family (one file each)."""

from harness_models import bigbird, linear_attention, linformer, luna, mamba, mega, reformer, s4, transformer  # noqa: F401
