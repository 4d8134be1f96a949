"""Kernel micro-benchmarks (pytest-benchmark): options, device, and a timer that is right on a GPU.

Timing. CUDA launches are asynchronous, so a host clock around a call measures only the launch. Each
benchmark therefore goes through `timed()`, which hands pytest-benchmark `benchmark.pedantic` a target
that runs the kernel and then `torch.cuda.synchronize()`, and a setup that synchronises before each
round (untimed, so queued work from setup or the previous round is never counted). pytest-benchmark's
own clock (time.perf_counter) then measures launch + device time of exactly one call per round: the
same sync-plus-host-clock method as torch.utils.benchmark. CUDA events would exclude the host launch
cost, which is part of what a kernel costs in eager PyTorch, and would need a custom stats path; a
custom `--benchmark-timer` cannot synchronise by itself. On the CPU the synchronise is a no-op and the
thread count is fixed (`--bench-threads`, default all cores). Rounds: `--bench-warmup` untimed (default 3) then
`--bench-rounds` timed (default 20), one call each (measurement.md: >= 3 warm-up, >= 10 timed).

Smoke mode. The project's addopts carry `--benchmark-disable`: then `benchmark.pedantic` runs the
target once, untimed, so `pytest benchmarks` checks that every kernel runs and matches its reference
(each benchmark compares its result with a simple reference before timing) in a few seconds.
`--benchmark-enable` (or `--benchmark-only`) times them.

Device: `--bench-device cpu|cuda`, else the BENCH_DEVICE environment variable, else cuda when available.
Lengths are small on the CPU (256, 1024) and long on CUDA (1024, 4096, 16384).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def pytest_addoption(parser):
    group = parser.getgroup("kernel benchmarks (benchmarks/)")
    group.addoption("--bench-device", choices=("cpu", "cuda"), default=None,
                    help="device for benchmarks/ (default: $BENCH_DEVICE, else cuda when available)")
    group.addoption("--bench-rounds", type=int, default=20, help="timed rounds per benchmark (default 20)")
    group.addoption("--bench-warmup", type=int, default=3, help="untimed warm-up rounds (default 3)")
    group.addoption("--bench-threads", type=int, default=None,
                    help="torch CPU threads while benchmarking (default: all cores)")


def _device_name(config) -> str:
    name = config.getoption("--bench-device") or os.environ.get("BENCH_DEVICE") or (
        "cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise pytest.UsageError(f"BENCH_DEVICE={name!r}: expected cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda (or BENCH_DEVICE=cuda) but torch.cuda.is_available() is "
                                "False; use --bench-device cpu")
    return name


def pytest_configure(config):
    config._bench_device = _device_name(config)


def pytest_report_header(config):
    name = config._bench_device
    detail = torch.cuda.get_device_name() if name == "cuda" else f"{torch.get_num_threads()} threads"
    return f"benchmarks device: {name} ({detail}), torch {torch.__version__}"


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    return torch.device(pytestconfig._bench_device)


@pytest.fixture(autouse=True)
def _threads(pytestconfig, device):
    """A fixed CPU thread count per benchmark (restored afterwards): --bench-threads, else all cores when
    timing; one thread in smoke mode, where nothing is timed and oversubscribed cores (other test
    processes) make multi-threaded small ops many times slower."""
    before = torch.get_num_threads()
    timing = pytestconfig.getoption("benchmark_enable") or not pytestconfig.getoption("benchmark_disable")
    torch.set_num_threads(pytestconfig.getoption("--bench-threads") or ((os.cpu_count() or 1) if timing else 1))
    yield
    torch.set_num_threads(before)


@pytest.fixture
def timed(benchmark, device, pytestconfig):
    """timed(fn): benchmark one call of fn per round, synchronised on CUDA (see the module docstring)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(fn):
        def target():
            fn()
            sync()

        import harness_models  # which checkout's code ran (a base worktree or this one)

        benchmark.extra_info.update(device=device.type, torch=torch.__version__,
                                    source=str(Path(harness_models.__file__).resolve().parent.parent),
                                    threads=torch.get_num_threads(),
                                    gpu=torch.cuda.get_device_name() if device.type == "cuda" else None)
        benchmark.pedantic(target, setup=sync, rounds=pytestconfig.getoption("--bench-rounds"),
                           warmup_rounds=pytestconfig.getoption("--bench-warmup"), iterations=1)

    return run
