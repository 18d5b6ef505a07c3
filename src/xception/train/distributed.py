"""Which process this is, and the few collective operations the loop needs.

Training runs as one process today; a data-parallel run (``torchrun``) sets RANK / WORLD_SIZE /
LOCAL_RANK, and the loop already asks everything it needs of this object: its rank and the world size
(to shard the data), whether it is the main process (it alone writes files and prints), and sums across
processes of evaluation counts (exact totals, not an average of averages).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls) -> DistEnv:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1:
            raise ValueError(
                f"WORLD_SIZE={world_size}: multi-process (torchrun) training is not supported by this version; "
                "run a single process"
            )
        return cls()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all processes, in place (a no-op for one process)."""
        if self.enabled:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()
