"""How many DataLoader worker processes a fine-tune uses and how many batches each prepares
ahead, from the host's CPUs and available memory (`num_workers: auto`; docs/memory.md).

The rule, per rank (the ranks on one host share it):
- CPUs: one worker per CPU of the rank's share, less one for the training process itself, at
  most MAX_WORKERS.
- Memory: the workers may take LOADING_SHARE of the rank's share of the available memory. Each
  costs WORKER_OVERHEAD (a process holding the dataset's file list and decoding images) plus
  `prefetch` decoded batches (batch x 3 x size x size float32). Fewer workers are used when the
  budget is short, and none (loading in the training process, nothing prefetched) when even one
  does not fit: loading slows down rather than the host running out of memory.

Torch-free and pure, so the rule is tested without a host of each shape.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_WORKERS = 8
#: torch's own default prefetch depth, batches per worker.
DEFAULT_PREFETCH = 2
#: Share of the available memory that data loading may take.
LOADING_SHARE = 0.25
#: Memory one worker process costs besides its prefetched batches.
WORKER_OVERHEAD = 256 << 20


@dataclass(frozen=True)
class LoaderPlan:
    workers: int
    prefetch: int | None  # batches each worker prepares ahead; None without workers
    why: str  # the log line


def plan_loading(
    workers: int | str,
    prefetch: int | None,
    *,
    cpus: int,
    available_bytes: int,
    ranks_on_host: int,
    batch_size: int,
    image_size: int,
) -> LoaderPlan:
    """The loader for `workers` (a number, or 'auto': the module's rule) and `prefetch` (a
    number, or None: DEFAULT_PREFETCH, fewer when memory is short). `batch_size` is the
    rank's batch."""
    if isinstance(workers, int):
        depth = (prefetch or DEFAULT_PREFETCH) if workers else None
        return LoaderPlan(workers, depth, f"{workers} worker processes (config.num_workers)")
    ranks = max(1, ranks_on_host)
    cpu_share = max(1, cpus // ranks)
    by_cpu = min(MAX_WORKERS, cpu_share - 1)
    budget = int(LOADING_SHARE * available_bytes / ranks)
    batch_bytes = batch_size * 3 * image_size * image_size * 4
    depth = prefetch or DEFAULT_PREFETCH
    if prefetch is None:
        # Shallower prefetching before fewer workers: a worker is worth more than a deep queue.
        while depth > 1 and by_cpu and WORKER_OVERHEAD + depth * batch_bytes > budget / by_cpu:
            depth -= 1
    by_memory = budget // (WORKER_OVERHEAD + depth * batch_bytes)
    count = max(0, min(by_cpu, by_memory))
    why = (
        f"{count} worker processes, {depth if count else 0} batches prefetched each "
        f"(num_workers auto: {cpu_share} CPUs for this rank allow {max(0, by_cpu)}; "
        f"{budget >> 20} MiB for loading ({round(LOADING_SHARE * 100)} % of "
        f"{available_bytes >> 20} MiB available / {ranks} ranks) allow {by_memory} at "
        f"{(WORKER_OVERHEAD + depth * batch_bytes) >> 20} MiB each)"
    )
    return LoaderPlan(count, depth if count else None, why)
