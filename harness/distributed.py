"""Data-parallel training of one accuracy cell over several processes (`torchrun`).

`torchrun --nproc-per-node N -m harness run ...` starts N copies of the harness with WORLD_SIZE,
RANK and LOCAL_RANK set. Each copy makes the same plan. Rank 0 is the driver: it opens the run,
fits the reference rows, runs the speed sweep and stores every record. Before the accuracy cells it
tells the other ranks which cells remain (a resumed run skips the same ones everywhere) and where
the run folder is (checkpoints are read by every rank and written by rank 0). Every rank then
trains each cell in the same order (harness/train.py): the same global batch is drawn on every
rank from the same seeded permutation, each rank takes its contiguous shard of batch / N examples
(DistributedSampler's scheme, so N ranks see exactly the examples one process would), DDP averages
the gradients, and rank 0 alone validates, tests and writes the record, which states the world
size and the per-rank batch beside the effective batch. Cells train in the driver process
(`--isolation inprocess`), where the process group lives. gloo on CPU, NCCL on CUDA (one GPU per
rank, `cuda:LOCAL_RANK`). BatchNorm statistics stay per rank (no SyncBatchNorm: the harness's
masked BatchNorm would lose its padding mask in the conversion); evaluation uses rank 0's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from harness.errors import UserError


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel ranks (size 1: no data parallelism)."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    def prepare(self, config, device: str) -> str:
        """Join the process group; returns the device string this rank trains on."""
        import torch
        import torch.distributed as dist

        if config.executor != "local":
            raise UserError(f"--executor {config.executor} under torchrun: data-parallel cells run in the "
                            f"torchrun processes themselves; drop --executor (or use local)")
        config.isolation = "inprocess"  # the process group lives in this process
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            torch.cuda.set_device(self.local_rank)
        return device

    def lead(self, units, run_dir: str) -> None:
        """Rank 0: send the other ranks the accuracy cells still to train and the run folder."""
        import torch.distributed as dist

        jobs = [u.job for u in units if u.kind == "accuracy"]
        dist.broadcast_object_list([jobs, run_dir], src=0)

    def follow(self, run_unit) -> None:
        """Ranks > 0: train the cells rank 0 names, in its order, with `run_unit` (the executors'; given
        by the runner, so this module needs nothing above it); their records are rank 0's to write."""
        import torch.distributed as dist

        message = [None, None]
        dist.broadcast_object_list(message, src=0)
        jobs, run_dir = message
        for job in jobs:
            for _ in run_unit(job, run_dir=run_dir):
                pass


def world() -> World:
    """The data-parallel world from torchrun's environment (size 1 outside torchrun)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UserError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)", exit_code=1)
    return World(size, rank, local)


def shard(index, world: World):
    """This rank's contiguous part of a global batch of indices (all of it when size is 1)."""
    if world.size == 1:
        return index
    per_rank = len(index) // world.size
    return index[world.rank * per_rank:(world.rank + 1) * per_rank]
