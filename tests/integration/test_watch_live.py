"""`matrec-ctl watch` against a real coordinator and agent with a running fine-tune: the curves
and numbers shown are the stored ones, and the live view in tmux updates while the job runs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from matrec.sdk.ctl.render import format_value
from matrec.sdk.ctl.terminal_chart import sparkline
from matrec.sdk.ctl.watch_view import CHART_WIDTH, WatchState, render
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster
from rich.console import Console
from support.cluster_jobs import finetune_spec
from support.tools import require_tool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("watch"), agents=1) as running:
        yield running


def test_watch_view_shows_the_stored_curves(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo
) -> None:
    with cluster.client() as client:
        job = client.submit_job(finetune_spec(small_dataset, 3))
        state = WatchState()
        for event in client.watch(job.id):
            state.apply(event)
        stored = client.job_metrics(job.id)
    console = Console(record=True, width=200, color_system=None)
    console.print(render(state, show_logs=False))
    text = console.export_text()

    val_acc = [m.value for m in stored if m.key == "val/accuracy"]
    train_loss = [m.value for m in stored if m.key == "train/loss"]
    assert len(val_acc) == 3 and len(train_loss) > 10
    val_row = next(line for line in text.splitlines() if "val acc" in line and "▁" in line)
    assert sparkline(val_acc, CHART_WIDTH) in val_row
    assert val_row.rstrip(" │").endswith(format_value(val_acc[-1]))
    loss_row = next(line for line in text.splitlines() if "train loss" in line and "▁" in line)
    assert sparkline(train_loss, CHART_WIDTH) in loss_row
    assert format_value(min(train_loss)) in loss_row


def test_watch_updates_live_in_a_terminal(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo
) -> None:
    require_tool("tmux")
    with cluster.client() as client:
        job = client.submit_job(finetune_spec(small_dataset, 4))
        session = f"matrec-watch-{time.monotonic_ns()}"
        command = (
            f"{sys.executable} -c 'from matrec.sdk.ctl.app import main; main()' "
            f"-c {cluster.address} watch {job.id}; sleep 30"
        )
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "45", command],
            check=True,
        )
        screens: list[str] = []
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                screen = subprocess.run(
                    ["tmux", "capture-pane", "-p", "-t", session],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                if job.id in screen and "running" in screen:
                    screens.append(screen)
                if client.get_job(job.id).finished:
                    break
                time.sleep(0.5)
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    distinct = list(dict.fromkeys(screens))
    assert len(distinct) >= 3, "the live view did not update while the job ran"
    # The header's elapsed time changes on its own; the train-loss curve (one block per step
    # while it has at most 40 steps: 4 epochs x 9 here) grows only as metrics arrive.
    # (A capture taken mid-redraw may miss a block: the counts need not be strictly monotonic.)
    shown = [steps for steps in map(train_loss_points, screens) if steps]
    assert len(set(shown)) >= 3 and shown[-1] > shown[0] + 2, (
        f"the step count did not increase while the job ran: {shown}"
    )


def train_loss_points(screen: str) -> int:
    """How many points the train-loss curve of a captured live view has (0: none shown)."""
    row = next((line for line in screen.splitlines() if "train loss" in line), "")
    return sum(char in "▁▂▃▄▅▆▇█" for char in row)
