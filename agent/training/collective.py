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


class GradientBuffer:
    """The flat buffer one step's gradients travel in, with the stop flag as its last element.

    The buffer and its per-gradient views are kept between steps while the gradients keep their
    shapes (gradual unfreezing changes them between epochs), so a step costs two multi-tensor
    copies and no allocation. The views have the gradients' shapes, and the copies convert
    layouts: a channels_last gradient needs no contiguous copy of its own first.
    """

    def __init__(self) -> None:
        self._key: tuple[object, ...] = ()
        self._flat = torch.zeros(1)
        self._views: list[torch.Tensor] = []

    def pack(self, grads: list[torch.Tensor], stop: bool, device: torch.device) -> torch.Tensor:
        key = (device, *(g.shape for g in grads))
        if key != self._key:
            counts = [g.numel() for g in grads]
            self._flat = torch.empty(sum(counts) + 1, dtype=torch.float32, device=device)
            parts = self._flat[:-1].split(counts)
            self._views = [part.view(g.shape) for part, g in zip(parts, grads, strict=True)]
            self._key = key
        if grads:
            torch._foreach_copy_(self._views, grads)
        self._flat[-1].fill_(1.0 if stop else 0.0)
        return self._flat

    def unpack(self, grads: list[torch.Tensor], size: int) -> bool:
        """Write the summed buffer back as averages; True if any rank asked to stop."""
        if size > 1:
            self._flat.div_(size)  # the flag stays > 0 where any rank set it
        if grads:
            torch._foreach_copy_(grads, self._views)
        return bool(self._flat[-1].item() > 0)


def _gradients(params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


class TorchDistributed:
    backend = "torch"

    def __init__(self, rank: int, size: int, local_rank: int, device: torch.device) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.device = device
        self._buffer = GradientBuffer()
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
        grads = _gradients(params)
        self._dist.all_reduce(self._buffer.pack(grads, stop, self.device))
        return self._buffer.unpack(grads, self.size)

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
        self._buffer = GradientBuffer()

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
        grads = _gradients(params)
        device = grads[0].device if grads else torch.device("cpu")
        flat = self._buffer.pack(grads, stop, device)
        # One name per buffer size, so that Horovod's response cache skips the negotiation.
        self._hvd.allreduce_(flat, op=self._hvd.Sum, name=f"gradients.{flat.numel()}")
        return self._buffer.unpack(grads, self.size)

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
