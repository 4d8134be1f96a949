"""Speed and peak-memory measurement (the protocol of shared/spec/measurement.md).

A cell is (model, task configuration, sequence length, batch, dtype, mode). For each cell:
1. build the model (the task's per-model configuration, wrapped by the harness head), the AdamW
   optimiser and a random batch of the task's input shape, all before timing;
2. run `warmup` untimed iterations, then `iters` timed ones. A `train_step` iteration is forward +
   loss + backward + optimiser step; a `forward` iteration is inference (`torch.inference_mode`);
   nothing inside an iteration waits for the device (no accuracy counts, no `.item()`), so a model
   is not charged for an idle GPU while the host catches up;
3. CUDA: one CUDA-event pair per iteration, one synchronise at the end; memory = the allocator's
   peak since a reset right after the build (`peak_allocated_bytes`, model + optimiser state +
   activations + gradients), its growth over the bytes allocated before the first timed iteration
   (`peak_increase_bytes`), `max_memory_reserved` and NVML's device-wide "used" (`footprint_bytes`);
   CPU: `time.perf_counter` per iteration with a fixed thread count; memory = the rise of the
   process's peak resident set over the resident set after the build (`peak_rss_increase_bytes`;
   the peak is reset through /proc/self/clear_refs, so in-process cells do not inherit an earlier peak);
4. report the median with p20/p80 and keep every sample.
A non-finite loss or output in any timed iteration makes the cell an `error`. Lengths are swept in
ascending order (one unit of work, harness/executors.py); an out-of-memory cell is `oom` and the
model's longer lengths are `skipped`; any
other exception is an `error` with its message. On CUDA each cell runs in a fresh subprocess by
default, so peak statistics, fragmentation and a poisoned CUDA context cannot leak between cells.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Cell:
    """One speed/memory measurement to make."""

    model: str
    task: str  # whose per-task model configuration (and input kind) is used
    seq_len: int
    batch_size: int
    dtype: str  # fp32 | bf16 | fp16 (autocast)
    device: str  # cpu | cuda
    mode: str  # train_step | forward
    warmup: int = 3
    iters: int = 10
    threads: int | None = None  # torch CPU threads (None: leave torch's default)
    seed: int = 0
    overrides: dict = field(default_factory=dict)  # architecture overrides from the user
    swept: list = field(default_factory=list)  # override keys of a sweep: they always label the row
    cuda_graphs: bool = False  # time whole-step CUDA graph replays (no host overhead, for every model)
    includes: list = field(default_factory=list)  # plugin files the child process must import
    task_options: dict = field(default_factory=dict)  # the task's changed head options (interaction, head dropout)

    def config(self, entry) -> dict:
        """The model's resolved config for this cell, adapted to the cell's length by the model's
        `fit_length` hook when it declares one (e.g. MEGA widens its learned position table to the
        length, as the official long-length measurements did); the adapted values are part of the
        recorded config."""
        overrides = entry.known_overrides(self.task, self.overrides)
        config = entry.config(self.task, overrides)
        fitted = entry.fit_length(config, self.seq_len) if entry.fit_length is not None else {}
        return entry.config(self.task, {**overrides, **fitted}) if fitted else config

    def identity(self, config_hash: str, task_version: str) -> dict:
        extra = {"cuda_graphs": True} if self.cuda_graphs else {}  # keys of eager cells stay as they were
        if self.task_options:  # likewise the keys of cells with the task's default head
            extra["task_options"] = self.task_options
        return dict(kind="speed", model=self.model, model_config_hash=config_hash, task=self.task,
                    task_version=task_version, seq_len=self.seq_len, batch_size=self.batch_size,
                    dtype=self.dtype, device=self.device, mode=self.mode, warmup=self.warmup,
                    iters=self.iters, **extra)


def backbone_runtime_info(backbone) -> dict | None:
    """The optional part of the backbone contract: a backbone whose execution path is chosen at run
    time (e.g. Mamba's scan: the mamba-ssm CUDA kernel or the PyTorch scan) has `runtime_info()`,
    which says which one ran in its latest forward; stored as the speed record's `runtime` field."""
    return backbone.runtime_info() if hasattr(backbone, "runtime_info") else None


# -- CPU resident-set helpers (Linux /proc; None elsewhere) ----------------------------------------

def _proc_status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


# -- one cell, in this process ----------------------------------------------------------------------

def make_iteration(model, batch: dict, optimizer, device_type: str, dtype: str, cuda_graphs: bool = False):
    """One timed iteration as a closure returning a 0-dim bool tensor, "non-finite", left on the
    device. A train step when `optimizer` is given (forward + loss + backward + step), else
    inference. Nothing in it synchronises with the device (tests/harness/test_runners.py checks).
    `cuda_graphs`: the whole iteration is captured once into a CUDA graph and each call replays it
    (`capture`), so no model pays host overhead per kernel; the optimizer must be `capturable`."""
    from harness.heads import autocast, task_loss

    def train_step():
        with autocast(device_type, dtype, cache=not cuda_graphs):
            logits = model(batch)
        loss = task_loss(logits, batch["y"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return ~torch.isfinite(loss.detach())

    def forward():
        with torch.no_grad() if cuda_graphs else torch.inference_mode(), \
                autocast(device_type, dtype, cache=not cuda_graphs):
            logits = model(batch)
        return ~torch.isfinite(logits).all()

    iteration = forward if optimizer is None else train_step
    return capture(iteration) if cuda_graphs else iteration


def capture(iteration, warmup: int = 3):
    """`iteration` recorded once into a CUDA graph: warmed up on a side stream (lazy initialisation,
    allocator growth and autotuning happen outside the graph, as CUDA graph capture requires), then
    captured; the returned closure replays the graph and returns the captured "non-finite" flag.
    The batch, parameters, gradients and optimizer state keep their addresses, so a replay is exactly
    one more step on the same batch (tests/harness/test_runners.py compares it with eager steps)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            iteration()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        flag = iteration()

    def replay():
        graph.replay()
        return flag

    return replay


def measure_cell(cell: Cell) -> dict:
    """Measure one cell here; returns the record fields (status ok/oom/error/unavailable)."""
    from harness.errors import is_oom, short_error
    from harness.heads import batch_to, build_classifier, count_parameters
    from harness.registry import MODELS, TASKS, include_file
    from harness.store import make_record

    for path in cell.includes:
        include_file(path)
    base = bare_record(cell)
    entry = MODELS.get(cell.model)
    task_cls = TASKS.get(cell.task).cls
    config = cell.config(entry)
    ok, reason = entry.availability()
    if not ok:
        return make_record(status="unavailable", error=reason, **base)

    if cell.threads:
        torch.set_num_threads(cell.threads)
    device = torch.device(cell.device)
    cuda = device.type == "cuda"
    model = optimizer = batch = None
    try:
        torch.manual_seed(cell.seed)
        generator = torch.Generator().manual_seed(cell.seed)
        model, _, _, _ = build_classifier(cell.model, cell.task, config, task_options=cell.task_options)
        model.to(device)
        n_params = count_parameters(model)
        task = task_cls(options=cell.task_options)
        batch = batch_to(task.random_batch(cell.batch_size, cell.seq_len, generator), device)
        train = cell.mode == "train_step"
        if train:
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, capturable=cell.cuda_graphs)
        else:
            model.eval()
        iteration = make_iteration(model, batch, optimizer, device.type, cell.dtype, cell.cuda_graphs)
        bad = torch.zeros((), dtype=torch.bool, device=device)  # accumulated without a sync

        def step():
            nonlocal bad
            bad = bad | iteration()

        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        rss_after_build = _proc_status_bytes("VmRSS")
        rss_reset = (not cuda) and _reset_peak_rss()
        for _ in range(cell.warmup):
            step()
        samples = []
        if cuda:
            torch.cuda.synchronize(device)
            allocated_before = torch.cuda.memory_allocated(device)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(cell.iters)]
            for start, end in events:
                start.record()
                step()
                end.record()
            torch.cuda.synchronize(device)
            samples = [s.elapsed_time(e) for s, e in events]
        else:
            for _ in range(cell.iters):
                t0 = time.perf_counter()
                step()
                samples.append((time.perf_counter() - t0) * 1e3)
        if bool(bad):
            return make_record(status="error", n_params=n_params,
                               error="non-finite loss or output in a timed iteration", **base)
        memory = {}
        if cuda:
            from harness.env import nvml_used_bytes

            peak = torch.cuda.max_memory_allocated(device)
            memory = dict(peak_allocated_bytes=peak, peak_increase_bytes=peak - allocated_before,
                          peak_reserved_bytes=torch.cuda.max_memory_reserved(device),
                          footprint_bytes=nvml_used_bytes(device.index or 0))
        else:
            hwm = _proc_status_bytes("VmHWM")
            if rss_reset and hwm is not None and rss_after_build is not None:
                memory = dict(peak_rss_increase_bytes=max(hwm - rss_after_build, 0), peak_rss_bytes=hwm)
        samples_sorted = sorted(samples)

        def quantile(q):
            return samples_sorted[min(len(samples_sorted) - 1, int(round(q * (len(samples_sorted) - 1))))]

        median = statistics.median(samples)
        timing = dict(median_ms=median, p20_ms=quantile(0.2), p80_ms=quantile(0.8), mean_ms=statistics.fmean(samples),
                      n_warmup=cell.warmup, n_iters=cell.iters, samples_ms=[round(s, 4) for s in samples],
                      timer="cuda-events" if cuda else "perf_counter",
                      threads=None if cuda else torch.get_num_threads())
        tokens = cell.batch_size * cell.seq_len * (2 if task_cls.spec.dual else 1)
        runtime = backbone_runtime_info(model.backbone)
        return make_record(status="ok", n_params=n_params, timing=timing, memory=memory, runtime=runtime,
                           throughput_tokens_per_s=tokens / (median / 1e3), **base)
    except Exception as exc:  # a plugin fault or OOM must become a record, not a crash
        status = "oom" if is_oom(exc) else "error"
        return make_record(status=status, error=short_error(exc), **base)
    finally:
        model = optimizer = batch = None  # release the cell's tensors before the next cell
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


# -- isolation -------------------------------------------------------------------------------------

def die_with_parent() -> None:
    """In a child process (`preexec_fn`): be killed when the driver dies, so a SIGKILLed driver leaves
    no cell running to overlap the `--resume` started right after it (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def measure_in_subprocess(cell: Cell, timeout: float | None) -> dict:
    """Run `measure_cell` in a fresh interpreter (`python -m harness.bench_cell`)."""
    from harness.store import make_record

    payload = json.dumps(dataclasses.asdict(cell))
    try:
        proc = subprocess.run([sys.executable, "-m", "harness.bench_cell"], input=payload, text=True,
                              capture_output=True, timeout=timeout, preexec_fn=die_with_parent)
    except subprocess.TimeoutExpired:
        return make_record(status="error", error=f"timeout: cell exceeded --cell-timeout {timeout:g} s",
                           **bare_record(cell))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr.strip().splitlines() or [""])[-1]
    status = "oom" if ("out of memory" in proc.stderr.lower() or proc.returncode in (-9, 137)) else "error"
    return make_record(status=status, error=f"cell process exited with {proc.returncode}: {tail}"[:500],
                       **bare_record(cell))


def bare_record(cell: Cell) -> dict:
    """Record fields known without building the model (also for cells whose process died)."""
    from harness.env import hardware
    from harness.records import Provenance
    from harness.registry import MODELS, TASKS
    from harness.store import cell_key, config_hash

    entry, spec = MODELS.get(cell.model), TASKS.get(cell.task).cls.spec
    arch, runtime = entry.split_config(cell.config(entry))
    variant = entry.variant(cell.task, cell.overrides, cell.swept)
    if cell.cuda_graphs:  # a bench setting, recorded and labelled as a runtime setting of the cell
        runtime, variant = {**runtime, "cuda_graphs": True}, {**variant, "cuda_graphs": True}
    chash = config_hash(arch)
    inputs = "random tokens" if spec.input_kind == "tokens" else "random pixels"
    return dict(kind="speed", model=cell.model, model_family=entry.family, complexity=entry.complexity, model_config=arch,
                runtime_config=runtime, variant=variant,
                model_config_hash=chash, task=cell.task, task_version=spec.version, task_options=cell.task_options,
                seq_len=cell.seq_len,
                batch_size=cell.batch_size, dtype=cell.dtype, device=cell.device, mode=cell.mode,
                seed=cell.seed, provenance=Provenance("random-inputs", inputs), hardware=hardware(cell.device),
                cell_key=cell_key(**cell.identity(chash, spec.version), runtime=runtime))
