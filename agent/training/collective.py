"""What the ranks of a distributed fine-tune do together: start from rank 0's weights, average
their gradients every step, agree on stopping, and sum their statistics.

Two backends with one interface: Horovod (Gloo on CPUs, NCCL where built) and torch.distributed
(gloo on CPUs, nccl on GPUs). Gradients travel as one flat buffer per step, with the stop flag
in its last element, so a SIGTERM seen by any rank stops every rank after the same step (no rank
is left waiting in a collective) at no extra communication. Horovod's DistributedOptimizer is
not used: its hooks are registered for the parameters that train when it is built, and gradual
unfreezing changes that set between epochs.

A rank learns its place from the environment the launcher (matrec.agent.launcher) sets:
MATREC_RANK, MATREC_WORLD_SIZE, MATREC_LOCAL_RANK and MATREC_BACKEND, plus the backend's own
variables (MASTER_ADDR/MASTER_PORT for torch, HOROVOD_* for Horovod).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Protocol

import torch
from torch import nn

RANK_ENV = "MATREC_RANK"
WORLD_SIZE_ENV = "MATREC_WORLD_SIZE"
LOCAL_RANK_ENV = "MATREC_LOCAL_RANK"
BACKEND_ENV = "MATREC_BACKEND"
#: Seconds a rank waits in a collective for a peer before it gives up (a lost host).
TIMEOUT_ENV = "MATREC_COLLECTIVE_TIMEOUT"


class Collective(Protocol):
    rank: int
    size: int
    local_rank: int
    backend: str

    def broadcast_model(self, model: nn.Module) -> None:
        """Every rank takes rank 0's parameters and buffers."""

    def average_gradients(self, params: Sequence[nn.Parameter], stop: bool) -> bool:
        """Average the gradients of `params` over the ranks; True if any rank asked to stop."""

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks."""

    def close(self) -> None: ...


class SingleProcess:
    rank, size, local_rank, backend = 0, 1, 0, "none"

    def broadcast_model(self, model: nn.Module) -> None:
        pass

    def average_gradients(self, params: Sequence[nn.Parameter], stop: bool) -> bool:
        return stop

    def sum(self, values: Sequence[float]) -> list[float]:
        return list(values)

    def close(self) -> None:
        pass


def _flat_gradients(params: Sequence[nn.Parameter], stop: bool) -> tuple[torch.Tensor, list]:
    grads = [p.grad for p in params if p.grad is not None]
    flag = torch.tensor([1.0 if stop else 0.0], device=grads[0].device if grads else "cpu")
    flat = torch.cat([*(g.reshape(-1).float() for g in grads), flag])
    return flat, grads


def _unflatten(flat: torch.Tensor, grads: list[torch.Tensor], size: int) -> bool:
    offset = 0
    for grad in grads:
        count = grad.numel()
        grad.copy_(flat[offset : offset + count].view_as(grad).div_(size))
        offset += count
    return bool(flat[-1].item() > 0)


class TorchDistributed:
    backend = "torch"

    def __init__(self, rank: int, size: int, local_rank: int, device: torch.device) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.device = device
        timeout = float(os.environ.get(TIMEOUT_ENV, "0") or 0)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            rank=rank,
            world_size=size,
            timeout=timedelta(seconds=timeout) if timeout > 0 else None,
        )

    def broadcast_model(self, model: nn.Module) -> None:
        for tensor in model.state_dict().values():
            # Collectives want contiguous memory; channels_last weights are not.
            buffer = tensor.contiguous()
            self._dist.broadcast(buffer, src=0)
            if buffer.data_ptr() != tensor.data_ptr():
                tensor.copy_(buffer)

    def average_gradients(self, params: Sequence[nn.Parameter], stop: bool) -> bool:
        flat, grads = _flat_gradients(params, stop)
        self._dist.all_reduce(flat.to(self.device) if flat.device != self.device else flat)
        return _unflatten(flat, grads, self.size)

    def sum(self, values: Sequence[float]) -> list[float]:
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        self._dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def close(self) -> None:
        self._dist.destroy_process_group()


class HorovodCollective:
    backend = "horovod"

    def __init__(self) -> None:
        import horovod.torch as hvd

        self._hvd = hvd
        hvd.init()
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        self._ops = 0

    def _name(self, what: str) -> str:
        self._ops += 1
        return f"{what}.{self._ops}"

    def broadcast_model(self, model: nn.Module) -> None:
        # hvd.broadcast_parameters refuses channels_last tensors ("Tensor is required to be
        # contiguous"): broadcast contiguous copies and copy them back.
        for name, tensor in model.state_dict().items():
            buffer = tensor.contiguous()
            self._hvd.broadcast_(buffer, root_rank=0, name=f"state.{name}")
            if buffer.data_ptr() != tensor.data_ptr():
                tensor.copy_(buffer)

    def average_gradients(self, params: Sequence[nn.Parameter], stop: bool) -> bool:
        flat, grads = _flat_gradients(params, stop)
        self._hvd.allreduce_(flat, op=self._hvd.Sum, name=self._name("gradients"))
        return _unflatten(flat, grads, self.size)

    def sum(self, values: Sequence[float]) -> list[float]:
        tensor = torch.tensor(list(values), dtype=torch.float64)
        total = self._hvd.allreduce(tensor, op=self._hvd.Sum, name=self._name("sum"))
        return [float(v) for v in total.tolist()]

    def close(self) -> None:
        self._hvd.shutdown()


def collective_from_env(device: torch.device) -> Collective:
    """The collective this process is part of: a single process unless a launcher set
    MATREC_WORLD_SIZE > 1."""
    size = int(os.environ.get(WORLD_SIZE_ENV, "1") or 1)
    if size <= 1:
        return SingleProcess()
    rank = int(os.environ[RANK_ENV])
    local_rank = int(os.environ.get(LOCAL_RANK_ENV, rank))
    backend = os.environ.get(BACKEND_ENV, "torch")
    if backend == "horovod":
        return HorovodCollective()
    return TorchDistributed(rank, size, local_rank, device)
