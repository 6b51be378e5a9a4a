"""Worker planning for the unified API: what the connected agents offer, how many ranks a
distributed fine-tune gets, and whether Horovod is there for the embedded agent's workers."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matrec.sdk.types import Agent


@dataclass(frozen=True)
class Capacity:
    """What the connected agents offer: the largest single agent (the most ranks one host can
    run) and the sum over all of them (the most trials at once)."""

    agents: int
    max_cpus: int
    max_gpus: int
    total_cpus: int
    total_gpus: int

    @classmethod
    def of(cls, agents: Sequence[Agent]) -> Capacity:
        connected = [a for a in agents if a.state == "connected"]
        cpus = [int(a.total.cpus) for a in connected]
        gpus = [int(a.total.gpus) for a in connected]
        return cls(len(connected), max(cpus, default=0), max(gpus, default=0), sum(cpus), sum(gpus))


def plan_workers(
    num_workers: int, batch_size: int | str, capacity: int, unit: str
) -> tuple[int, list[str]]:
    """Ranks for a distributed fine-tune asked for `num_workers` on hosts offering at most
    `capacity` `unit` ("CPU" or "GPU") each: at most that many, and a divisor of batch_size
    (each rank trains on an equal slice; any number divides batch_size 'auto', which the ranks
    choose as a multiple of themselves). The notes say why fewer were taken."""
    if num_workers <= 1:
        return 1, ["distributed: num_workers is 1, so training runs as one process"]
    notes: list[str] = []
    ranks = num_workers
    if capacity < ranks:
        ranks = max(capacity, 1)
        notes.append(
            f"distributed: {num_workers} workers asked for, but the largest agent offers "
            f"{capacity} {unit}{'s' if capacity != 1 else ''}: {ranks} "
            f"rank{'s' if ranks != 1 else ''}"
        )
    if not isinstance(batch_size, int):
        return ranks, notes
    fitting = max(k for k in range(1, ranks + 1) if batch_size % k == 0)
    if fitting < ranks:
        notes.append(
            f"distributed: batch_size {batch_size} does not split into {ranks} equal parts: "
            f"{fitting} rank{'s' if fitting != 1 else ''}"
        )
    return fitting, notes


def plan_ranks(
    num_workers: int,
    batch_size: int | str,
    capacity: Capacity,
    on_gpu: bool,
    *,
    local_auto_backend: bool,
) -> tuple[int, list[str]]:
    """`plan_workers` on the largest agent's GPUs (on_gpu) or CPUs; with more than one rank
    on this machine's agent under backend auto (`local_auto_backend`), a note when Horovod is
    missing and torch.distributed takes over."""
    ranks, notes = plan_workers(
        num_workers,
        batch_size,
        capacity.max_gpus if on_gpu else capacity.max_cpus,
        "GPU" if on_gpu else "CPU",
    )
    if ranks > 1 and local_auto_backend and not horovod_installed():
        notes.append(
            "distributed: Horovod is not installed here, so the ranks use "
            "torch.distributed (gloo on CPUs, nccl on GPUs)"
        )
    return ranks, notes


def choose_device(wanted: str, capacity: Capacity) -> tuple[str, list[str]]:
    """cpu or cuda for `wanted` (auto, cpu, cuda) on these agents; a note when a GPU was
    wanted but none exists."""
    if wanted == "cpu":
        return "cpu", []
    if capacity.max_gpus > 0:
        return "cuda", []
    if wanted == "cuda":
        return "cpu", ["device: cuda asked for, but no agent has a GPU: training on CPU"]
    return "cpu", ["device: no agent has a GPU: training on CPU"]


def final_resources(
    ranks: int, capacity: Capacity, on_gpu: bool, num_workers: int
) -> dict[str, Any]:
    """The final job's resources. GPU jobs: one GPU and one CPU per rank. CPU jobs:
    `num_workers` CPUs (at most the largest agent's), shared by the ranks as torch threads."""
    if on_gpu:
        return {"gpus": ranks, "cpus": float(ranks)}
    cpus = max(ranks, min(num_workers, max(capacity.max_cpus, 1)))
    return {"cpus": float(cpus)}


def horovod_installed() -> bool:
    """Whether Horovod with its torch extension is installed for this Python (the embedded
    agent's workers use it), checked without importing it."""
    spec = importlib.util.find_spec("horovod")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(
        any((Path(location) / "torch").glob("mpi_lib_v2*"))
        for location in spec.submodule_search_locations
    )
