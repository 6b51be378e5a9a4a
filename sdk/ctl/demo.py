"""`matrec-ctl demo` and `matrec-ctl dataset demo`: the whole product on one machine.

The SDK client and the dataset maker load inside the functions: the CLI imports this module for
its defaults while building `--help`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matrec.sdk.ctl.errors import EXIT_FAILURE, print_error, stderr
from matrec.sdk.ctl.watch_view import follow, summary
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

if TYPE_CHECKING:
    from matrec.sdk.local_cluster import LocalCluster

#: Epochs of the demo fine-tune: a few minutes on a 2-core CPU, enough to learn the six textures.
DEMO_EPOCHS = 6
DEMO_SPEC_CONFIG: dict[str, Any] = {
    "model": "resnet18",
    "image_size": 64,
    "batch_size": 32,
    "learning_rate": 1e-3,
}


def make_dataset(
    path: Path,
    console: Console,
    *,
    seed: int = 0,
    patch_size: int = 64,
    train_per_class: int = 80,
    val_per_class: int = 20,
) -> None:
    """Write the built-in demo dataset to `path`, with a progress bar."""
    from matrec.sdk.demo_dataset import make_demo_dataset

    with Progress(
        TextColumn("[bold]demo dataset"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        bar = progress.add_task("images", total=None)
        info = make_demo_dataset(
            path,
            seed=seed,
            patch_size=patch_size,
            train_per_class=train_per_class,
            val_per_class=val_per_class,
            progress=lambda done, total: progress.update(bar, completed=done, total=total),
        )
    train, val = sum(info.train_counts.values()), sum(info.val_counts.values())
    console.print(
        f"demo dataset: {len(info.classes)} classes ({', '.join(info.classes)}), "
        f"{train} train + {val} val images of {info.patch_size} px "
        f"in [bold]{escape(str(info.path))}[/]"
    )


def _is_demo_dataset(path: Path) -> bool:
    from matrec.sdk.demo_dataset import MANIFEST_NAME

    # The manifest is written last, so its presence means a complete dataset.
    return (path / MANIFEST_NAME).is_file()


def run_demo(
    workdir: Path, *, epochs: int, agents: int, keep_running: bool, console: Console
) -> int:
    """Dataset, coordinator, agents, one fine-tune watched live, clean shutdown; the exit code."""
    from matrec.sdk.local_cluster import ClusterStartError, LocalCluster

    workdir = workdir.resolve()
    dataset = workdir / "dataset"
    if _is_demo_dataset(dataset):
        console.print(f"reusing the demo dataset in [bold]{escape(str(dataset))}[/]")
    else:
        make_dataset(dataset, console)

    # A SIGTERM or SIGHUP to us raises SystemExit while the cluster runs (see LocalCluster),
    # so the `finally` below stops the coordinator and agents, which run in their own sessions.
    cluster = LocalCluster(workdir, agents=agents, agent_name_prefix="demo-agent", owns_jobs=True)
    try:
        return _run(cluster, dataset, epochs, keep_running, console)
    except ClusterStartError as exc:
        print_error(str(exc))
        stderr.print(Text(exc.log_tail, style="dim"), soft_wrap=True)
        stderr.print(f"(full log: {exc.log_path})", markup=False)
        return EXIT_FAILURE
    finally:
        with console.status("stopping the agents and the coordinator…"):
            cluster.stop()
        console.print(f"logs are in [bold]{escape(str(cluster.logs_dir))}[/]")


def _run(
    cluster: LocalCluster, dataset: Path, epochs: int, keep_running: bool, console: Console
) -> int:
    with console.status("starting the coordinator…"):
        cluster.start_coordinator()
    console.print(f"coordinator listening on [bold]{cluster.address}[/]")
    with console.status(f"starting {cluster.agent_count} agents…"):
        for index in range(cluster.agent_count):
            cluster.start_agent(index)
        connected = cluster.wait_for_agents()
    console.print(f"agents connected: {', '.join(agent.name for agent in connected)}")

    spec = {
        "name": "demo-finetune",
        "kind": "finetune",
        "config": {"dataset_path": str(dataset), "epochs": epochs, **DEMO_SPEC_CONFIG},
        "resources": {"cpus": 1},
    }
    with cluster.client() as client:
        job = client.submit_job(spec)
        console.print(f"submitted job [bold]{job.id}[/]: resnet18, {epochs} epochs")
        follow(client.watch(job.id, include_logs=True), console, show_logs=True)
        job = client.get_job(job.id)
    console.print(summary(job))
    if job.result.get("checkpoint_path"):
        console.print(f"checkpoint: {job.result['checkpoint_path']}", markup=False)
    if keep_running:
        console.print(
            f"the coordinator keeps running at [bold]{cluster.address}[/] "
            f"(matrec-ctl -c {cluster.address} jobs); press Ctrl-C to stop it"
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0 if job.state == "succeeded" else EXIT_FAILURE
