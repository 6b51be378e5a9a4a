"""Out-of-memory recovery by micro-batching (agent/training/memory.py), on CPU.

The out-of-memory errors come from the engine's test hook (MATREC_TEST_OOM_ABOVE), which raises
torch's real OutOfMemoryError from the forward pass; the recovery is the production code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from matrec.agent.training.finetune import FinetuneResult, run_finetune
from matrec.agent.training.memory import (
    METRIC,
    OOM_TEST_ENV,
    MicroBatching,
    OutOfMemory,
    check_simulated_limit,
    probe_sizes,
)
from matrec.agent.training.optim import training_loss
from matrec.common.specs import BATCH_SIZE_METRIC
from matrec.sdk.demo_dataset import DemoDatasetInfo
from torch import nn
from unit.test_finetune import STEPS_PER_EPOCH, RecordingReporter, make_config


def weights(artifact_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(artifact_dir / "model.pt", weights_only=False)[
        "model_state"
    ]
    return state


class Reporter(RecordingReporter):
    result: FinetuneResult | None = None


def finetune(
    dataset: Path,
    artifact_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    limit: int | None,
    **cfg: object,
) -> Reporter:
    if limit is None:
        monkeypatch.delenv(OOM_TEST_ENV, raising=False)
    else:
        monkeypatch.setenv(OOM_TEST_ENV, str(limit))
    reporter = Reporter()
    config = make_config(dataset, epochs=1, log_every_steps=1, **cfg)
    reporter.result = run_finetune(config, artifact_dir, reporter)
    return reporter


def assert_every_step_once(reporter: RecordingReporter) -> None:
    points = reporter.points()  # fails on a (step, key) reported twice
    assert sorted(s for s, k in points if k == "train/loss") == list(range(1, STEPS_PER_EPOCH + 1))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], buffers: bool) -> float:
    keys = [k for k in a if ("running_" in k or "num_batches" in k) == buffers]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in keys)


@pytest.mark.slow
def test_head_only_in_micro_batches_ends_with_the_unsplit_weights(
    small_dataset: DemoDatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    finetune(small_dataset.path, tmp_path / "whole", monkeypatch, None, strategy="head_only")
    split = finetune(small_dataset.path, tmp_path / "split", monkeypatch, 5, strategy="head_only")
    # 16 fails, 8 fails, 4 fits: from the first step on, and reported once.
    assert [(s, v[METRIC]) for s, v in split.metrics_calls if METRIC in v] == [(1, 4.0)]
    assert sum("micro-batches of 8" in line for line in split.logs) == 1
    assert sum("micro-batches of 4" in line for line in split.logs) == 1
    assert split.result is not None and split.result.micro_batch == 4
    assert [line.split(";")[0] for line in split.result.memory_adaptations] == [
        "out of memory at step 1 with 16 images in one pass",
        "out of memory at step 1 with 8 images in one pass",
    ]
    assert_every_step_once(split)
    whole, parts = weights(tmp_path / "whole"), weights(tmp_path / "split")
    # The frozen backbone (eval mode) makes the accumulated step the unsplit one up to float
    # rounding: measured 3.7e-9 at most.
    assert max_difference(whole, parts, buffers=False) < 1e-6
    assert max_difference(whole, parts, buffers=True) == 0.0


@pytest.mark.slow
def test_full_in_micro_batches_is_close_to_the_unsplit_run(
    small_dataset: DemoDatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    finetune(small_dataset.path, tmp_path / "whole", monkeypatch, None, strategy="full")
    split = finetune(small_dataset.path, tmp_path / "split", monkeypatch, 8, strategy="full")
    assert [(s, v[METRIC]) for s, v in split.metrics_calls if METRIC in v] == [(1, 8.0)]
    assert_every_step_once(split)
    whole, parts = weights(tmp_path / "whole"), weights(tmp_path / "split")
    # BatchNorm layers that train normalise each micro-batch by its own statistics, so this is
    # close, not equal: after 9 steps the largest weight differs by 0.0097 (micro-batches of 4
    # or 8, measured 2026-12-07; docs/memory.md). BN's running statistics differ more.
    assert max_difference(whole, parts, buffers=False) < 0.03


@pytest.mark.parametrize(("micro_batch", "limit"), [("auto", 5), (4, None)])
def test_a_probed_or_fixed_micro_batch_is_used_from_the_first_step(
    small_dataset: DemoDatasetInfo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    micro_batch: int | str,
    limit: int | None,
) -> None:
    run = finetune(
        small_dataset.path, tmp_path, monkeypatch, limit, strategy="head_only",
        micro_batch=micro_batch,
    )  # fmt: skip
    assert [(s, v[METRIC]) for s, v in run.metrics_calls if METRIC in v] == [(1, 4.0)]
    assert not [line for line in run.logs if "out of memory at step" in line]
    probed = [line for line in run.logs if line.startswith("memory probe:")]
    if micro_batch == "auto":
        assert len(probed) == 1
        assert probed[0].startswith("memory probe: micro-batches of 4 images fit (batch size 16)")
    else:
        assert probed == []
    assert_every_step_once(run)
    assert run.result is not None and run.result.micro_batch == 4


def test_smallest_micro_batch_not_fitting_fails_naming_batch_image_and_memory(
    small_dataset: DemoDatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(OutOfMemory) as caught:
        finetune(small_dataset.path, tmp_path, monkeypatch, 0, strategy="head_only")
    message = str(caught.value)
    assert "batch size 16" in message
    assert "image size 32x32 px" in message
    assert "host memory:" in message and "MiB total" in message
    assert "micro-batches of 1 image" in message


class _Limit:
    """A forward pass that runs out of memory above `limit` images, like the engine's hook."""

    def __init__(self, model: nn.Module, limit: int | None) -> None:
        self.model, self.limit, self.sizes = model, limit, list[int]()

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        check_simulated_limit(len(images), self.limit)
        self.sizes.append(len(images))
        out: torch.Tensor = self.model(images)
        return out


def test_micro_batch_grows_again_after_a_while_and_backs_off_when_it_fails() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    reporter = RecordingReporter()
    micro = MicroBatching(16, 8, torch.device("cpu"), reporter, grow_after=2)
    forward = _Limit(model, 5)
    images, labels, indices = torch.randn(16, 3), torch.randint(0, 2, (16,)), torch.arange(16)

    def step(number: int) -> None:
        model.zero_grad(set_to_none=True)
        micro.train_step(model, forward, _loss, images, labels, indices, number)

    step(1)  # 16 -> 8 -> 4
    step(2)
    assert micro.size == 4
    step(3)  # after 2 steps: tries 8, which fails; back to 4, and waits 4 steps next time
    assert micro.size == 4
    forward.limit = None  # the memory another process held is free again
    for number in range(4, 7):
        step(number)
    assert micro.size == 4  # steps 3 to 6 at 4: still waiting
    step(7)
    assert micro.size == 8
    assert [(s, v[METRIC]) for s, v in reporter.metrics_calls] == [(1, 4.0), (7, 8.0)]
    assert any("step 3: trying micro-batches of 8 again" in line for line in reporter.logs)


def test_accumulated_gradients_equal_the_whole_batch_and_evaluation_splits_too() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    images, labels, indices = torch.randn(10, 3), torch.randint(0, 2, (10,)), torch.arange(10)
    _loss(model(images), labels).backward()
    expected = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    micro = MicroBatching(10, 8, torch.device("cpu"), RecordingReporter())
    forward = _Limit(model, 3)
    logits, loss = micro.train_step(model, forward, _loss, images, labels, indices, 1)
    assert forward.sizes == [2, 2, 2, 2, 2]  # 10 failed, then 5 failed
    got = [p.grad for p in model.parameters() if p.grad is not None]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    assert loss == pytest.approx(_loss(model(images), labels).item())
    torch.testing.assert_close(logits, model(images).detach())
    with torch.inference_mode():
        torch.testing.assert_close(micro.evaluating(forward)(images, indices), model(images))


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return training_loss(logits, labels, 0.0)


def test_batch_size_auto_takes_the_largest_batch_that_fits_and_changes_nothing_else(
    small_dataset: DemoDatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    auto = finetune(
        small_dataset.path, tmp_path / "auto", monkeypatch, 20, strategy="head_only",
        batch_size="auto",
    )  # fmt: skip
    # 144 training images: the cap is 36 (a quarter); 2, 4, 8, 16 fit, 32 does not.
    assert [(s, v) for s, v in auto.metrics_calls if BATCH_SIZE_METRIC in v] == [
        (0, {BATCH_SIZE_METRIC: 16.0})
    ]
    probed = [line for line in auto.logs if line.startswith("batch-size probe:")]
    assert len(probed) == 1
    assert probed[0].startswith("batch-size probe: 16 images per step fit (32 images ran out")
    assert not [line for line in auto.logs if "out of memory at step" in line]
    assert not [v for _, v in auto.metrics_calls if METRIC in v]
    assert_every_step_once(auto)  # 144 // 16 = 9 steps
    assert auto.result is not None and auto.result.batch_size == 16
    # The probe's passes leave no trace: the run ends where batch_size 16 ends.
    fixed = finetune(
        small_dataset.path, tmp_path / "fixed", monkeypatch, None, strategy="head_only",
        batch_size=16,
    )  # fmt: skip
    assert fixed.result is not None and fixed.result.batch_size == 16
    assert max_difference(weights(tmp_path / "auto"), weights(tmp_path / "fixed"), False) == 0.0
    # A resumed attempt keeps the batch its checkpoint was trained with, without probing.
    again = finetune(
        small_dataset.path, tmp_path / "auto", monkeypatch, None, strategy="head_only",
        batch_size="auto",
    )  # fmt: skip
    assert again.result is not None and again.result.batch_size == 16
    assert not [v for _, v in again.metrics_calls if BATCH_SIZE_METRIC in v]


def test_batch_size_auto_stops_at_its_cap_and_fails_when_nothing_fits(
    small_dataset: DemoDatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert probe_sizes(36) == [2, 4, 8, 16, 32, 36]
    assert probe_sizes(1) == [1]
    capped = finetune(
        small_dataset.path, tmp_path / "capped", monkeypatch, None, strategy="head_only",
        batch_size="auto",
    )  # fmt: skip
    assert capped.result is not None and capped.result.batch_size == 36
    assert capped.result.steps == 144 // 36
    with pytest.raises(OutOfMemory) as caught:
        finetune(
            small_dataset.path, tmp_path / "none", monkeypatch, 1, strategy="head_only",
            batch_size="auto",
        )  # fmt: skip
    message = str(caught.value)
    assert "batch-size probe (batch_size auto) with 2 images" in message
    assert "image size 32x32 px" in message and "MiB available" in message
