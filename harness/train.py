"""Accuracy runs: train a model on a task, keep the best-validation weights, evaluate them on test.

Optimiser and schedule follow the MEGA/fairseq LRA recipe (mega.md §6): AdamW (decoupled weight
decay; per-parameter `_optim` hints honoured, e.g. S4's SSM parameters), betas (0.9, 0.98), eps
1e-8, gradient clipping at 1.0, linear warm-up from ~0 to the peak learning rate then linear decay
to 0 at the last step. bf16/fp16 autocast on GPU is an option (fp16 uses a gradient scaler).
Validation runs every `eval_every` steps and at the end; the best-validation weights are evaluated
on the test split (evaluating the last checkpoint is what made LRA's ListOps numbers collapse,
lra.md §10 #15). Settings resolve as: harness defaults < the model's per-task paper setting <
the scale preset < command-line overrides; the resolved settings are stored on the record.

Fair budgets (issue 12):
- `--lr-grid`: the plan has one cell per multiplier; the peak learning rate is the
  resolved one times the multiplier (per-parameter `_optim` learning rates, e.g. S4's SSM
  parameters, are absolute settings of the model and are not scaled). Each grid point is its own
  cell and record (`train.lr`, `train.lr_multiplier`, `train.lr_grid`).
- `--time-budget SECONDS`: training stops at the first step after SECONDS of optimiser steps
  (validation and checkpoint time are not counted) or at the last step, whichever comes first;
  then the model is validated at that step and the best-validation weights so far are tested.
  The learning-rate schedule stays the resolved one: it is not compressed into the budget, so a
  cell stopped early has not decayed its learning rate to 0 (`metrics.steps` says where it stopped).
- `--cell-timeout SECONDS`: a wall-clock safety limit on the whole cell; when it passes, training
  stops the same way and the best weights are tested (`metrics.stopped = "timeout"`). Only a
  timeout before the first step, when there is nothing to evaluate, is an error record.

Long runs save a checkpoint every `checkpoint_every` steps into the run folder and resume from it
(the time-budget clock resumes with them). A non-finite loss ends the cell with status `error`
("diverged at step N"); running out of memory gives status `oom`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from harness import distributed
from harness.config import RunConfig
from harness.errors import UserError, is_oom, short_error
from harness.env import hardware
from harness.heads import autocast, batch_to, build_classifier, count_parameters, loss_and_correct, param_groups, task_loss
from harness.registry import MODELS, TASKS
from harness.store import cell_key, config_hash, make_record

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.01  # decoupled (AdamW), on every parameter without an `_optim` hint
    batch_size: int = 32
    warmup_steps: int = 100  # warm-up from `warmup_init_lr` to `lr` (fairseq's schedule)
    warmup_init_lr: float = 1e-7
    warmup_power: float = 1.0  # 1 = linear warm-up; MEGA's Path-X uses 2 (quadratic)
    total_steps: int = 1000  # linear decay to 0 at this step
    eval_every: int = 100  # validation interval in steps
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-8
    clip: float = 1.0  # gradient-norm clipping (0 = off)
    eval_batch_size: int = 64
    checkpoint_every: int = 0  # steps between resumable checkpoints (0 = never)


def resolve_settings(model_name: str, task_name: str, config: RunConfig) -> TrainSettings:
    entry = MODELS.get(model_name)
    paper = entry.train_config(task_name)
    scale = config.scale_preset
    s = TrainSettings()
    _override(s, **{key: paper.get(key) for key in ("lr", "weight_decay", "batch_size", "warmup_steps",
                                                    "warmup_power", "total_steps")})
    if "betas" in paper:
        s.betas = tuple(paper["betas"])
    _override(s, total_steps=scale.total_steps, batch_size=scale.batch_size, lr=scale.lr)
    # A task may cap batch and steps at a scale (e.g. Path-X smoke: 16K pixels on a CPU).
    hints = config.build_task(task_name).sizes(config.scale)
    if "batch_size" in hints:
        s.batch_size = min(s.batch_size, hints["batch_size"])
    if "total_steps" in hints:
        s.total_steps = min(s.total_steps, hints["total_steps"])
    _override(s, total_steps=config.steps, batch_size=config.batch_size, lr=config.lr)
    if scale.warmup_fraction is not None or config.steps is not None:
        s.warmup_steps = max(1, int(round((scale.warmup_fraction or 0.1) * s.total_steps)))
    s.warmup_steps = min(s.warmup_steps, s.total_steps)
    s.eval_every = scale.eval_every or max(1, s.total_steps // 20)
    s.eval_every = min(s.eval_every, s.total_steps)
    if config.checkpoint_every is not None:
        s.checkpoint_every = config.checkpoint_every
    else:
        s.checkpoint_every = 0 if scale.name == "smoke" else max(s.eval_every, 500)
    s.eval_batch_size = max(s.batch_size, 16)
    return s


def _override(s: TrainSettings, **values) -> None:
    """Set the given settings, skipping those left unset (None)."""
    for key, value in values.items():
        if value is not None:
            setattr(s, key, value)


def lr_factor(step: int, s: TrainSettings) -> float:
    """Multiplier of the peak learning rate at optimiser step `step` (0-based): fairseq's warm-up,
    init + (peak - init) * (step / warmup)^power, then linear decay to 0 at `total_steps`."""
    if step < s.warmup_steps:
        start = min(s.warmup_init_lr / s.lr, 1.0)
        return start + (1.0 - start) * (step / s.warmup_steps) ** s.warmup_power
    remaining = s.total_steps - s.warmup_steps
    return max(0.0, 1.0 - (step - s.warmup_steps) / max(remaining, 1))


@torch.no_grad()
def evaluate(model, data, device, dtype, batch_size) -> tuple[float, float, int]:
    """(accuracy, mean loss, number scored) over a split: examples for sequence targets, scored
    positions for per-token targets."""
    model.eval()
    correct = scored = 0
    loss_sum = 0.0
    for start in range(0, len(data), batch_size):
        index = torch.arange(start, min(start + batch_size, len(data)))
        batch = _typed(batch_to(data.batch(index), device))
        with autocast(device.type, dtype):
            logits = model(batch)
        loss, c, n = loss_and_correct(logits, batch["y"])
        correct, scored = correct + c, scored + n
        loss_sum += float(loss) * n
    model.train()
    return correct / max(scored, 1), loss_sum / max(scored, 1), scored


def _typed(batch: dict) -> dict:
    """Token ids as int64 (storage may be int16/uint8); real values stay as stored."""
    out = dict(batch)
    for key in ("x", "x2"):
        if key in out and out[key].dtype in (torch.int16, torch.int32):
            out[key] = out[key].long()
    out["y"] = out["y"].long()
    return out


class Diverged(RuntimeError):
    """A non-finite training loss."""


class CellTimeout(RuntimeError):
    """--cell-timeout passed before the first training step: there are no weights worth testing."""


@dataclass
class Limits:
    """When to stop training before the last step (None = no such limit)."""

    time_budget: float | None = None  # seconds of optimiser steps (--time-budget)
    cell_timeout: float | None = None  # wall-clock seconds of the whole fit (--cell-timeout)


def cell_identity(model_name: str, task_name: str, seed: int, config: RunConfig, *, device: str, dtype: str,
                  lr_multiplier: float = 1.0) -> dict:
    """Everything that describes one accuracy cell before it runs: the resolved training settings,
    the architecture apart from the runtime settings, the variant, the task options changed from
    their defaults, and the cell key (resume)."""
    entry = MODELS.get(model_name)
    task_cls = TASKS.get(task_name).cls
    task_options = config.build_task(task_name).options.changed()
    settings = resolve_settings(model_name, task_name, config)
    settings.lr = settings.lr * lr_multiplier
    overrides = entry.known_overrides(task_name, config.model_overrides)
    arch, runtime = entry.split_config(entry.config(task_name, overrides))
    chash = config_hash(arch)
    train = dict(dataclasses.asdict(settings), lr_multiplier=lr_multiplier, time_budget=config.time_budget)
    world = distributed.world()
    if world.size > 1:  # the effective batch stays `batch_size`, split over the ranks
        train.update(world_size=world.size, per_rank_batch=settings.batch_size // world.size)
    if config.lr_grid is not None:
        train["lr_grid"] = config.lr_multipliers
    key = cell_key(kind="accuracy", model=model_name, model_config_hash=chash, runtime=runtime, task=task_name,
                   task_version=task_cls.spec.version, scale=config.scale, seed=seed, dtype=dtype,
                   device=device, train=train, data_dir=config.data_dir, data_seed=config.data_seed,
                   **({"task_options": task_options} if task_options else {}))  # default keys stay as they were
    return dict(settings=settings, overrides=overrides, key=key, base=dict(
        kind="accuracy", model=model_name, model_family=entry.family, complexity=entry.complexity, model_config=arch, runtime_config=runtime,
        variant=entry.variant(task_name, overrides, config.swept_keys), model_config_hash=chash, task=task_name, task_version=task_cls.spec.version,
        task_options=task_options, batch_size=settings.batch_size, dtype=dtype, device=device, mode="train", seed=seed, scale=config.scale,
        train=train, cell_key=key, hardware=hardware(device),
        higher_is_better={"accuracy": True, "val_accuracy": True, "loss": False}))


def train_cell(model_name: str, task_name: str, seed: int, config: RunConfig, *, device: str, dtype: str,
               run=None, on_progress=None, done_keys: set | None = None, lr_multiplier: float = 1.0) -> dict | None:
    """Train + evaluate one (model, task, seed, learning-rate multiplier); returns a record (never
    raises for model faults), or None when `done_keys` shows the same cell already finished (resume).

    The peak learning rate is the resolved one times `lr_multiplier`. With `config.time_budget` or
    `config.cell_timeout`, training may stop before the last step; the record is then still `ok`,
    with the best-validation weights tested, `metrics.steps` < `train.total_steps` and
    `metrics.stopped` = "time-budget" | "timeout" (None when training reached its last step).
    `on_progress(text)`, when given, hears the step and loss after every optimiser step."""
    entry = MODELS.get(model_name)
    TASKS.get(task_name)  # an unknown task is a usage error, raised before the cell starts
    try:
        cell = cell_identity(model_name, task_name, seed, config, device=device, dtype=dtype,
                             lr_multiplier=lr_multiplier)
    except UserError:
        raise
    except Exception as exc:  # e.g. a plugin task whose sizes() fails for this scale: that cell's error
        return make_record(kind="accuracy", model=model_name, task=task_name, seed=seed, scale=config.scale,
                           device=device, dtype=dtype, mode="train", status="error",
                           error=f"task {task_name}: settings for scale {config.scale}: {short_error(exc)}")
    settings, key, base = cell["settings"], cell["key"], cell["base"]
    if done_keys and key in done_keys:
        return None
    ok, reason = entry.availability()
    if not ok:
        return make_record(status="unavailable", error=reason, **base)
    task = config.build_task(task_name, read=True)
    try:
        base["seq_len"] = task.seq_len
        splits = {s: task.load(s) for s in ("train", "val", "test")}
        spec = task.input_spec()  # e.g. the pixel statistics of the data set actually read
    except UserError:
        raise
    except Exception as exc:
        return make_record(status="error", error=f"data: {short_error(exc)}", **base)
    empty = [name for name, data in splits.items() if len(data) == 0]
    if empty:  # model selection or the test would silently score 0 of 0
        return make_record(status="error", error=f"data: task {task_name} has an empty {' and '.join(empty)} "
                           f"split at scale {config.scale}; every split needs examples", **base)
    base["provenance"] = splits["train"].provenance
    ckpt_path = (Path(run.dir) / "checkpoints" / f"{key}.pt") if run is not None and settings.checkpoint_every else None
    limits = Limits(time_budget=config.time_budget, cell_timeout=config.cell_timeout)
    started = time.perf_counter()
    try:
        result = _fit(model_name, task_name, seed, splits, settings, torch.device(device), dtype,
                      ckpt_path, on_progress, config.threads, limits, cell["overrides"], spec, task.options)
    except (Diverged, CellTimeout) as exc:
        return make_record(status="error", error=str(exc), **base)
    except Exception as exc:  # plugin faults and OOM become records; the run goes on
        return make_record(status="oom" if is_oom(exc) else "error", error=short_error(exc), **base)
    if result is None:  # a data-parallel follower: rank 0 writes the record
        return None
    metrics = dict(accuracy=result["test_acc"], val_accuracy=result["best_val_acc"], loss=result["test_loss"],
                   n_test=result["n_test"], best_step=result["best_step"], steps=result["steps"],
                   stopped=result["stopped"], train_step_seconds=round(result["train_step_seconds"], 2),
                   train_seconds=round(time.perf_counter() - started, 2))
    if ckpt_path is not None:
        ckpt_path.unlink(missing_ok=True)
    return make_record(status="ok", n_params=result["n_params"], metrics=metrics, **base)


def _fit(model_name, task_name, seed, splits, s: TrainSettings, device, dtype, ckpt_path, on_progress, threads,
         limits: Limits | None = None, overrides=None, spec=None, task_options=None):
    limits = limits or Limits()
    deadline = time.perf_counter() + limits.cell_timeout if limits.cell_timeout else None
    if threads:
        torch.set_num_threads(threads)
    world = distributed.world()
    if world.size > 1 and s.batch_size % world.size:
        raise ValueError(f"the batch of {s.batch_size} does not split over {world.size} data-parallel ranks; "
                         f"give --batch-size a multiple of {world.size}")
    lead = world.rank == 0  # validates, tests and checkpoints
    torch.manual_seed(seed)
    model, _, _, _ = build_classifier(model_name, task_name, overrides, spec=spec, task_options=task_options)
    model.to(device)
    trained = model  # what the optimiser steps: the model, or its DDP wrapper
    optimizer = torch.optim.AdamW(param_groups(model, s.lr, s.weight_decay), lr=s.lr, betas=s.betas, eps=s.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, s))
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == "fp16" and device.type == "cuda"))
    generator = torch.Generator().manual_seed(seed)
    train = splits["train"]
    # step_seconds: time spent in optimiser steps, what --time-budget counts (kept across resume);
    # val_step: the step of the latest validation (a stop validates unless it just did).
    state = dict(step=0, best_val=-1.0, best_step=0, best_weights=None, order=None, cursor=0,
                 step_seconds=0.0, val_step=0)
    saved = _load_checkpoint(ckpt_path) if ckpt_path is not None and ckpt_path.exists() else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])  # dropout masks continue exactly where they stopped
        if saved.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        state.update(saved["state"])
    if world.size > 1:  # after a checkpoint is loaded: DDP starts every rank from rank 0's weights
        trained = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)

    def validate():
        if not lead:
            return
        val_acc, _, _ = evaluate(model, splits["val"], device, dtype, s.eval_batch_size)
        state["val_step"] = state["step"]
        if val_acc > state["best_val"]:
            state.update(best_val=val_acc, best_step=state["step"],
                         best_weights={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})

    def limit_reached() -> str | None:
        if limits.time_budget is not None and state["step_seconds"] >= limits.time_budget:
            return "time-budget"
        if deadline is not None and time.perf_counter() > deadline:
            return "timeout"
        return None

    model.train()
    stopped = None
    while state["step"] < s.total_steps:
        stopped = limit_reached()
        if stopped is not None:
            break
        step_started = time.perf_counter()
        if state["order"] is None or state["cursor"] + s.batch_size > len(train):
            state["order"], state["cursor"] = torch.randperm(len(train), generator=generator), 0
        index = state["order"][state["cursor"]: state["cursor"] + s.batch_size]
        state["cursor"] += s.batch_size
        batch = _typed(batch_to(train.batch(distributed.shard(index, world)), device))
        with autocast(device.type, dtype):
            logits = trained(batch)
        loss = task_loss(logits, batch["y"])
        loss_value = float(_mean_over_ranks(loss.detach(), world))  # the one host sync per step
        if not math.isfinite(loss_value):
            raise Diverged(f"diverged at step {state['step'] + 1}: loss is {loss_value}")
        scaler.scale(loss).backward()
        if s.clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        state["step"] += 1
        state["step_seconds"] += time.perf_counter() - step_started
        if on_progress is not None:
            on_progress(f"{model_name}/{task_name} step {state['step']}/{s.total_steps} "
                        f"loss {loss_value:.3f}")
        if state["step"] % s.eval_every == 0 or state["step"] == s.total_steps:
            validate()
        if lead and ckpt_path is not None and state["step"] % s.checkpoint_every == 0 and state["step"] < s.total_steps:
            _save_checkpoint(ckpt_path, model, optimizer, scheduler, generator, state, device)
    if stopped == "timeout" and state["step"] == 0:
        raise CellTimeout(f"timeout before the first step: --cell-timeout {limits.cell_timeout:g} s passed "
                          f"while building the model")
    if not lead:
        return None
    if state["best_weights"] is None or state["val_step"] != state["step"]:
        validate()  # a stop between validations (or before the first one) looks at where it stopped
    model.load_state_dict(state["best_weights"])
    test_acc, test_loss, n_test = evaluate(model, splits["test"], device, dtype, s.eval_batch_size)
    return dict(test_acc=test_acc, test_loss=test_loss, n_test=n_test, best_val_acc=state["best_val"],
                best_step=state["best_step"], steps=state["step"], stopped=stopped,
                train_step_seconds=state["step_seconds"], n_params=count_parameters(model))


def _mean_over_ranks(loss: torch.Tensor, world) -> torch.Tensor:
    """The loss averaged over the data-parallel ranks (itself with one process): every rank then
    sees the same value, so all stop together on a non-finite loss."""
    if world.size == 1:
        return loss
    import torch.distributed as dist

    total = loss.float().clone()
    dist.all_reduce(total)
    return total / world.size


def _load_checkpoint(path: Path) -> dict | None:
    """A saved training state, or None (with a warning) when the file cannot be read: a damaged
    checkpoint is moved aside and the cell starts again from step 0 instead of failing on every
    --resume."""
    try:
        saved = torch.load(path, weights_only=False)
        if isinstance(saved, dict) and {"model", "optimizer", "scheduler", "generator", "state"} <= saved.keys():
            return saved
        problem = "not a training checkpoint"
    except Exception as exc:  # torch raises several kinds for a torn or foreign file
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    aside = path.with_name(path.name + ".damaged")
    path.replace(aside)
    log.warning(f"checkpoint {path} is unreadable ({problem}); moved to {aside.name}, the cell "
                f"restarts from step 0")
    return None


def _save_checkpoint(path: Path, model, optimizer, scheduler, generator, state, device) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    generator=generator.get_state(), torch_rng=torch.get_rng_state(),
                    cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    state=copy.copy(state)), tmp)
    os.replace(tmp, path)
