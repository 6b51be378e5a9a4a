"""Data loading sized to the host (agent/training/loading.py): the rule on hosts of several
shapes, worked out by hand from docs/memory.md, and a fine-tune that uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
from matrec.agent.training.finetune import run_finetune
from matrec.agent.training.loading import plan_loading
from matrec.sdk.demo_dataset import DemoDatasetInfo
from unit.test_finetune import RecordingReporter, make_config

GIB = 1 << 30


@pytest.mark.parametrize(
    ("cpus", "available", "ranks", "batch", "image", "expected"),
    [
        # 15 CPUs spare, capped at 8; 16 GiB for loading fits 55 workers of 256 + 2 x 18 MiB.
        (16, 64 * GIB, 1, 32, 224, (8, 2)),
        (2, 64 * GIB, 1, 32, 224, (1, 2)),  # one CPU trains, one loads
        (1, 64 * GIB, 1, 32, 224, (0, None)),  # loading in the training process
        (16, 64 * GIB, 4, 32, 224, (3, 2)),  # 4 ranks share the host: 4 CPUs each
        # 1 GiB for loading; a batch of 256 at 224 px is 147 MiB: prefetch 1, then 2 workers.
        (16, 4 * GIB, 1, 256, 224, (2, 1)),
        (16, 1 * GIB, 1, 256, 224, (0, None)),  # 256 MiB: not even one worker
    ],
)
def test_auto_workers_follow_the_cpus_and_the_memory_available(
    cpus: int,
    available: int,
    ranks: int,
    batch: int,
    image: int,
    expected: tuple[int, int | None],
) -> None:
    plan = plan_loading(
        "auto", None, cpus=cpus, available_bytes=available, ranks_on_host=ranks,
        batch_size=batch, image_size=image,
    )  # fmt: skip
    assert (plan.workers, plan.prefetch) == expected
    assert f"{plan.workers} worker processes" in plan.why and "num_workers auto" in plan.why


def test_the_config_overrides_the_rule() -> None:
    def plan(
        workers: int | str, prefetch: int | None, cpus: int, available: int
    ) -> tuple[int, int | None]:
        chosen = plan_loading(
            workers, prefetch, cpus=cpus, available_bytes=available, ranks_on_host=1,
            batch_size=256, image_size=224,
        )  # fmt: skip
        return chosen.workers, chosen.prefetch

    # Numbers given are used whatever the host: here 1 CPU and 256 MiB available.
    assert plan(3, None, 1, GIB // 4) == (3, 2)
    assert plan(4, 6, 1, GIB // 4) == (4, 6)
    assert plan(0, None, 1, GIB // 4) == (0, None)
    # A prefetch depth given with auto is kept; only the number of workers adapts.
    assert plan("auto", 4, 16, 64 * GIB) == (8, 4)


def test_a_fine_tune_with_auto_workers_logs_what_it_chose(
    small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    reporter = RecordingReporter()
    config = make_config(small_dataset.path, epochs=1, num_workers="auto", strategy="head_only")
    result = run_finetune(config, tmp_path, reporter)
    assert result.steps == 9
    (line,) = [line for line in reporter.logs if line.startswith("data loading: ")]
    assert "num_workers auto" in line
