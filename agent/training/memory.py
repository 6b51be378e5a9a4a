"""Training in the memory there is: a step that runs out of memory is repeated as micro-batches.

When a forward or backward pass raises torch's OutOfMemoryError, the step's gradients are thrown
away, the buffers (BatchNorm running statistics) are put back as they were before the step, and
the same global batch runs again as micro-batches of half the size, each one's loss weighted by
its share of the batch, the gradients accumulating. The optimizer then takes one step with the
sum: the same step as the unsplit batch up to float rounding, except that BatchNorm layers that
train normalise each micro-batch with its own statistics (docs/memory.md states the difference
measured). No step is skipped and the global batch, so the learning-rate schedule, never changes.

The largest micro-batch that worked is kept; after `GROW_AFTER_STEPS` steps at it a larger one
is tried again (memory another process held may have been freed), and each failed try doubles
that wait. Every change is logged and reported as the metric `memory/micro_batch` at the first
step that ran with it. Evaluation passes are split the same way.

`batch_size: auto` (probe_batch_size) finds, before the first step, the largest batch that
fits: passes over 1, 2, 4, ... images until one runs out of memory (or would leave too little
headroom, or reaches the cap), undoing each.

For tests, `MATREC_TEST_OOM_ABOVE=N` makes every forward pass of more than N images raise the
real OutOfMemoryError; everything else here is the production path.
"""

from __future__ import annotations

import gc
import math
import os
import resource
from collections.abc import Callable

import psutil
import torch
from matrec.agent.training.evaluation import Forward
from matrec.agent.training.reporting import Reporter
from matrec.common.specs import MICRO_BATCH_METRIC
from torch import nn

#: Test hook: a forward pass over more images than this raises torch.OutOfMemoryError.
OOM_TEST_ENV = "MATREC_TEST_OOM_ABOVE"
#: Steps at a reduced micro-batch before a larger one is tried again.
GROW_AFTER_STEPS = 200
METRIC = MICRO_BATCH_METRIC
#: batch_size auto: at most this many images per step (all ranks together) ...
AUTO_BATCH_MAX = 512
#: ... and at most the training set divided by this (so that an epoch has that many steps).
AUTO_BATCH_MIN_STEPS = 4
#: The probe leaves this share of a GPU's memory as the most a micro-batch may peak at.
PROBE_MARGIN = 0.85

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: The first `n` training images as (images, labels, indices): what the batch-size probe uses.
Sample = Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class OutOfMemory(MemoryError):
    """Even one image at a time does not fit: the task cannot train on this device."""


def simulated_limit() -> int | None:
    """The test hook's limit, None when unset. Raises ValueError on a malformed value."""
    raw = os.environ.get(OOM_TEST_ENV, "").strip()
    if not raw:
        return None
    try:
        limit = int(raw)
    except ValueError:
        raise ValueError(f"{OOM_TEST_ENV}={raw!r}: expected a whole number of images") from None
    if limit < 0:
        raise ValueError(f"{OOM_TEST_ENV}={raw!r}: expected 0 or more images")
    return limit


def check_simulated_limit(images: int, limit: int | None) -> None:
    if limit is not None and images > limit:
        raise torch.OutOfMemoryError(
            f"simulated out of memory: {images} images in one pass, {OOM_TEST_ENV}={limit}"
        )


def memory_description(device: torch.device) -> str:
    """What memory the device had, for an error message."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        peak = torch.cuda.max_memory_allocated(device)
        return (
            f"{device}: {_mib(total)} MiB total, {_mib(free)} MiB free, peak {_mib(peak)} MiB "
            "allocated by this task"
        )
    host = psutil.virtual_memory()
    return f"host memory: {_mib(host.total)} MiB total, {_mib(host.available)} MiB available"


def _mib(value: int) -> int:
    return value // (1 << 20)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class MicroBatching:
    """Runs steps and evaluation passes in micro-batches that fit; see the module docstring.

    `batch_size` is the batch this process trains on per step (a rank's slice of the global
    batch in a distributed run); `size` starts there, or at a size a checkpoint remembered.
    """

    def __init__(
        self,
        batch_size: int,
        image_size: int,
        device: torch.device,
        reporter: Reporter,
        size: int = 0,
        grow_after: int = GROW_AFTER_STEPS,
        grow: bool = True,
    ) -> None:
        self.batch_size = batch_size
        self.image_size = image_size
        self.device = device
        self.reporter = reporter
        self.size = min(size, batch_size) if size > 0 else batch_size
        self._reported = batch_size  # what the metric last said (the full batch: no metric)
        self._steps_at_size = 0
        self._grow_after = grow_after
        self._grow = grow  # False: the user fixed the micro-batch; never try a larger one
        #: Each change, as logged: what the result reports as adapted.
        self.changes: list[str] = []

    def train_step(
        self,
        model: nn.Module,
        forward: Forward,
        loss_fn: LossFn,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        step: int,
    ) -> tuple[torch.Tensor, float]:
        """Forward and backward over the batch, gradients accumulated into the parameters'
        .grad (which must be empty). Returns the batch's logits (detached) and its mean loss.
        `step` is the 1-based optimizer step this is, for the log and the metric."""
        self._maybe_grow(len(labels), step)
        buffers = [b.detach().clone() for b in model.buffers()]
        batch = (images, labels, indices)
        result = self._accumulate_until_it_fits(
            model, buffers, forward, loss_fn, batch, f"step {step}"
        )
        self._steps_at_size += 1
        if self.size != self._reported:
            self.reporter.metrics(step, {METRIC: float(self.size)})
            self._reported = self.size
        return result

    def probe(
        self,
        model: nn.Module,
        forward: Forward,
        loss_fn: LossFn,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
    ) -> int:
        """Before the first step: the largest micro-batch that fits, halving from the whole
        batch, by forward and backward passes over `images` that change nothing (gradients and
        buffers are put back). On a GPU, a size that peaks above PROBE_MARGIN of the device's
        memory is halved too, leaving room for what later steps allocate."""
        buffers = [b.detach().clone() for b in model.buffers()]
        use_cuda = self.device.type == "cuda"
        while True:
            if use_cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            batch = (images, labels, indices)
            self._accumulate_until_it_fits(
                model, buffers, forward, loss_fn, batch, "the memory probe"
            )
            _undo(model, buffers)
            if use_cuda and self.size > 1:
                _, total = torch.cuda.mem_get_info(self.device)
                peak = torch.cuda.max_memory_allocated(self.device)
                if peak > PROBE_MARGIN * total:
                    self.size //= 2
                    self._note(
                        f"memory probe: micro-batches of {self.size * 2} peak at {_mib(peak)} "
                        f"of {_mib(total)} MiB; using {self.size} for headroom"
                    )
                    continue
            self._note(
                f"memory probe: micro-batches of {self.size} images fit (batch size "
                f"{self.batch_size}); {memory_description(self.device)}"
            )
            return self.size

    def evaluating(self, forward: Forward) -> Forward:
        """`forward` for evaluation (no gradients): each batch split into micro-batches."""

        def split_forward(images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
            while True:
                try:
                    return torch.cat(
                        [
                            forward(images[part], indices[part])
                            for part in _parts(len(images), self.size)
                        ]
                    )
                except torch.OutOfMemoryError as exc:
                    self._shrink(len(images), "evaluation", exc)

        return split_forward

    def _accumulate_until_it_fits(
        self,
        model: nn.Module,
        buffers: list[torch.Tensor],
        forward: Forward,
        loss_fn: LossFn,
        batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        where: str,
    ) -> tuple[torch.Tensor, float]:
        """_accumulate, halving the micro-batch after each out-of-memory error (which undoes
        the failed pass's gradients and buffer updates)."""
        while True:
            try:
                return self._accumulate(forward, loss_fn, *batch)
            except torch.OutOfMemoryError as exc:
                _undo(model, buffers)
                self._shrink(len(batch[1]), where, exc)

    def _accumulate(
        self,
        forward: Forward,
        loss_fn: LossFn,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
    ) -> tuple[torch.Tensor, float]:
        total = len(labels)
        logits: list[torch.Tensor] = []
        loss_sum = 0.0
        for part in _parts(total, self.size):
            part_logits = forward(images[part], indices[part])
            # The batch's mean loss is the micro-batches' means weighted by their shares; one
            # micro-batch has weight 1.0, which leaves the unsplit step bit for bit as it was.
            loss = loss_fn(part_logits, labels[part]) * ((part.stop - part.start) / total)
            loss.backward()
            logits.append(part_logits.detach())
            loss_sum += loss.item()
        return torch.cat(logits), loss_sum

    def _shrink(self, batch: int, where: str, exc: torch.OutOfMemoryError) -> None:
        free_memory(self.device)
        tried = min(self.size, batch)
        if tried <= 1:
            raise OutOfMemory(
                f"out of memory at {where} even with micro-batches of 1 image: batch size "
                f"{self.batch_size}, image size {self.image_size}x{self.image_size} px, "
                f"{memory_description(self.device)}. Use a smaller image_size or model, or an "
                f"agent with more memory ({' '.join(str(exc).split())[:300]})"
            ) from exc
        self.size = tried // 2
        self._steps_at_size = 0
        self._note(
            f"out of memory at {where} with {tried} images in one pass; running it again as "
            f"micro-batches of {self.size} (batch size {self.batch_size} unchanged, gradients "
            "accumulated)"
        )

    def _maybe_grow(self, batch: int, step: int) -> None:
        if not self._grow or self.size >= batch or self._steps_at_size < self._grow_after:
            return
        self.size = min(batch, self.size * 2)
        self._steps_at_size = 0
        # If this fails, _shrink comes back to the old size and waits twice as long next time.
        self._grow_after *= 2
        self._note(f"step {step}: trying micro-batches of {self.size} again")

    def _note(self, text: str) -> None:
        self.changes.append(text)
        self.reporter.log(text)


def probe_sizes(most: int) -> list[int]:
    """The per-rank batch sizes the batch-size probe tries, in order: 2, 4, 8, ... and `most`
    (1 only when `most` is 1: BatchNorm layers that train cannot normalise a single image)."""
    sizes = [min(2, most)]
    while sizes[-1] * 2 < most:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] < most:
        sizes.append(most)
    return sizes


def probe_batch_size(
    model: nn.Module,
    forward: Forward,
    loss_fn: LossFn,
    sample: Sample,
    most: int,
    image_size: int,
    device: torch.device,
    reporter: Reporter,
    host_share: int = 1,
) -> int:
    """`batch_size: auto`: the largest of probe_sizes(most) images this process can train on
    per step. Each size runs one forward and backward pass that changes nothing (gradients and
    buffers are put back); the search stops at the first size that runs out of memory, and
    before a size that would not leave headroom: on a GPU, a size whose peak exceeds
    PROBE_MARGIN of the device's memory does not count as fitting; on a CPU, the next size is
    not tried when the memory the last one added, scaled to the next size, exceeds PROBE_MARGIN
    of the host's available memory divided among `host_share` ranks on the host (running out of
    host memory is not an error a process can recover from). Raises OutOfMemory when not even
    one image fits."""
    buffers = [b.detach().clone() for b in model.buffers()]
    use_cuda = device.type == "cuda"
    room = PROBE_MARGIN * psutil.virtual_memory().available / max(1, host_share)
    resident = psutil.Process().memory_info().rss
    fits = 0
    why = f"the cap of {most} images"
    for size in probe_sizes(most):
        if use_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        images, labels, indices = sample(size)
        try:
            part = slice(0, size)
            loss_fn(forward(images[part], indices[part]), labels[part]).backward()
        except torch.OutOfMemoryError as exc:
            _undo(model, buffers)
            free_memory(device)
            if fits == 0:
                raise OutOfMemory(
                    f"out of memory in the batch-size probe (batch_size auto) with {size} "
                    f"images, the fewest it tries: "
                    f"image size {image_size}x{image_size} px, {memory_description(device)}. "
                    f"Use a smaller image_size or model, or an agent with more memory "
                    f"({' '.join(str(exc).split())[:300]})"
                ) from exc
            why = f"{size} images ran out of memory"
            break
        finally:
            del images, labels, indices
        _undo(model, buffers)
        if use_cuda:
            _, total = torch.cuda.mem_get_info(device)
            peak = torch.cuda.max_memory_allocated(device)
            if peak > PROBE_MARGIN * total and fits:
                why = f"{size} images peak at {_mib(peak)} of {_mib(total)} MiB"
                break
            fits = size
        else:
            fits = size
            added = max(0, _peak_resident() - resident)
            if size < most and added * min(most, size * 2) / size > room:
                why = (
                    f"{size} images added {_mib(added)} MiB; the next size would need more "
                    f"than the {_mib(int(room))} MiB of host memory it may take"
                )
                break
    free_memory(device)
    reporter.log(
        f"batch-size probe: {fits} images per step fit ({why}); {memory_description(device)}"
    )
    return fits


def _peak_resident() -> int:
    """This process's peak resident memory, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _undo(model: nn.Module, buffers: list[torch.Tensor]) -> None:
    """Forget a failed or trial pass: no gradients, the buffers as they were before it."""
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for buffer, saved in zip(model.buffers(), buffers, strict=True):
            buffer.copy_(saved)


def _parts(total: int, size: int) -> list[slice]:
    count = math.ceil(total / max(1, size))
    return [slice(i * size, min(total, (i + 1) * size)) for i in range(count)]
