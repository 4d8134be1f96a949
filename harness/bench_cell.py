"""Child-process entry point of an isolated speed cell: reads a Cell as JSON on stdin and prints
its record as one JSON line on stdout (`python -m harness.bench_cell`)."""

from __future__ import annotations

import json
import sys

from harness.bench import Cell, measure_cell


def main() -> int:
    cell = Cell(**json.loads(sys.stdin.read()))
    record = measure_cell(cell)
    sys.stdout.write(json.dumps(record, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
