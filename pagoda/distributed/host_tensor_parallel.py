"""A tensor-parallel group whose ranks share one host: collectives through shared memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagoda.distributed.shm_comm import ShmCommunicator
from pagoda.parallel import TensorParallel


@dataclass(frozen=True)
class HostTensorParallel(TensorParallel):
    """``TensorParallel`` with the all-reduce and all-gather of ``ShmCommunicator``; the layers
    call the same two methods, so their forwards do not change."""

    comm: ShmCommunicator | None = None  # None only for a group of one

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.comm is None or self.size == 1 else self.comm.all_reduce(x)

    def all_gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        if self.comm is None or self.size == 1:
            return x
        return torch.cat(self.comm.all_gather(x), dim=-1)
