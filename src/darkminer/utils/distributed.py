"""Sharding work over the processes of a launcher (`torchrun`, or `accelerate launch --multi_gpu`), gathered on all.

With one process everything is local. Under a launcher (`WORLD_SIZE` > 1 in the environment) the processes join
torch's default process group (NCCL on GPUs, gloo otherwise); item i goes to process i mod world size, and `gather`
returns every process's items to all of them, so that rank 0 can write what one process would have written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


class Workers:
    """This process's place among the launched ones."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0")) if self.world > 1 else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            # Rank 0 runs the attacks alone while the others wait at a barrier: hours on a real model.
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":  # NCCL's collectives run on the current device: this process's own GPU
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend=backend, timeout=timedelta(hours=24))

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that writes results."""
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """The GPU of this process when several share a machine (one each), else None (the job's own choice)."""
        if self.world > 1 and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return None

    def shard(self, count: int) -> list[int]:
        """Indexes of the items of `count` this process handles."""
        return list(range(self.rank, count, self.world))

    def gather(self, items: Sequence[Any]) -> list[Any]:
        """Every process's `items`, concatenated (each process gets the whole list)."""
        if self.world == 1:
            return list(items)
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, list(items))
        return [item for part in parts for item in part]

    def wait(self) -> None:
        """Wait until every process gets here."""
        if self.world > 1:
            dist.barrier()
