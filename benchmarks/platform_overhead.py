"""What the platform costs: the same fine-tune in-process versus through coordinator + agent.

    python benchmarks/platform_overhead.py [--epochs 3] [--repeat 1] [--json OUT]

One run measures, on the built-in demo dataset (resnet18, 64 px, batch 32, seed 0, a train/loss
metric every step):

* in-process: `run_finetune` called directly (torch already imported, a no-op reporter);
* through the platform: a real coordinator and one agent (LocalCluster, SQLite), the job sent
  with `Client.submit_job` and awaited with `Client.wait`: submit -> job succeeded;
* the delay from SubmitJob to the worker's first optimizer step: the time of the stored
  train/loss metric of step 1 minus the submit time. That metric time is stamped by the agent
  when it reads the worker's event, so it includes the pipe from worker to agent but not the
  agent -> coordinator hop;
* the start-up of a worker process: a fresh `python -c pass` and a fresh Python importing the
  training module (torch and torchvision).

Both runs get the same torch intra-op thread count (--threads; the agent gives a worker one thread
per CPU the task requests) and the same device (--device auto picks CUDA when torch sees it; the
job then requests one GPU). Times are wall-clock seconds; with --repeat the table shows medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

MODEL = "resnet18"
IMAGE_SIZE = 64
BATCH_SIZE = 32
SEED = 0


class NullReporter:
    """A Reporter that drops everything except the times of the first and the last metric."""

    def __init__(self) -> None:
        self.first_metric_at: float | None = None
        self.last_metric_at: float | None = None

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.last_metric_at = time.perf_counter()
        if self.first_metric_at is None:
            self.first_metric_at = self.last_metric_at

    def checkpoint(self, path: Path, epoch: int, step: int) -> None:
        pass

    def log(self, text: str) -> None:
        pass


@dataclass
class Round:
    """One repetition: the in-process run and the platform run of the same fine-tune."""

    in_process_s: float
    in_process_first_step_s: float  # run_finetune call -> first reported metric (step 1)
    in_process_training_s: float  # first -> last reported metric
    in_process_val_accuracy: float
    platform_s: float  # submit_job called -> wait() returned a succeeded job
    platform_val_accuracy: float
    job_id: str
    submit_to_first_step_s: float  # submit -> agent read the worker's step-1 train/loss metric
    submit_to_assigned_s: float | None  # coordinator events, from the job's history
    submit_to_started_s: float | None
    submit_to_finished_s: float | None
    platform_training_s: float  # first -> last stored metric (agent stamps)
    last_metric_to_finished_s: float | None  # last stored metric -> job finished (coordinator)
    steps: int

    @property
    def overhead_ratio(self) -> float:
        return self.platform_s / self.in_process_s


@dataclass
class Report:
    settings: dict[str, Any]
    python_startup_s: float
    worker_import_s: float
    cluster_start_s: float
    rounds: list[Round] = field(default_factory=list)

    def median(self, name: str) -> float | None:
        values = [getattr(r, name) for r in self.rounds]
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    def to_dict(self) -> dict[str, Any]:
        rounds = [{**asdict(r), "overhead_ratio": r.overhead_ratio} for r in self.rounds]
        names = [name for name in rounds[0] if name != "job_id"] if rounds else []
        medians = {name: self.median(name) for name in names}
        return {
            "settings": self.settings,
            "python_startup_s": self.python_startup_s,
            "worker_import_s": self.worker_import_s,
            "cluster_start_s": self.cluster_start_s,
            "rounds": rounds,
            "median": medians,
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare a fine-tune run in-process with the same run through the platform."
    )
    parser.add_argument("--epochs", type=int, default=3, help="fine-tune epochs (default: 3)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds to run (default: 1)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write results")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both runs = CPUs the job requests (default: 1)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep everything here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.repeat < 1 or args.threads < 1:
        parser.error("--epochs, --repeat and --threads must be at least 1")
    return args


def timed_python(code: str, env: dict[str, str]) -> float:
    """Wall time of a fresh interpreter running `code` (best of three)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        best = min(best, time.perf_counter() - started)
    return best


def epoch_seconds(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


@dataclass
class InProcessRun:
    seconds: float
    first_step_s: float
    training_s: float
    val_accuracy: float
    steps: int


def run_in_process(config: Any, artifact_dir: Path) -> InProcessRun:
    """run_finetune, timed: in all, to the first metric, and from the first to the last metric."""
    from matrec.agent.training.finetune import run_finetune

    reporter = NullReporter()
    started = time.perf_counter()
    result = run_finetune(config, artifact_dir, reporter)
    seconds = time.perf_counter() - started
    assert reporter.first_metric_at is not None and reporter.last_metric_at is not None
    return InProcessRun(
        seconds=seconds,
        first_step_s=reporter.first_metric_at - started,
        training_s=reporter.last_metric_at - reporter.first_metric_at,
        val_accuracy=result.val_accuracy,
        steps=result.steps,
    )


def run_platform(client: Any, spec: dict[str, Any]) -> tuple[float, Any, float]:
    """(seconds from submit to wait() returning, the finished job, the submit time)."""
    submitted_at = time.time()
    started = time.perf_counter()
    job = client.submit_job(spec)
    job = client.wait(job.id, timeout=3600)
    seconds = time.perf_counter() - started
    if job.state != "succeeded":
        raise SystemExit(f"job {job.id} ended {job.state}: {job.error}")
    return seconds, job, submitted_at


def first_event_time(job: Any, kind: str) -> float | None:
    times = [epoch_seconds(e.time) for e in job.history if e.kind == kind and e.time is not None]
    return min(t for t in times if t is not None) if times else None


def since(start: float, value: float | None) -> float | None:
    return None if value is None else value - start


def benchmark(args: argparse.Namespace, workdir: Path) -> Report:
    import torch
    from matrec.common.specs import FinetuneConfig
    from matrec.sdk.demo_dataset import make_demo_dataset
    from matrec.sdk.local_cluster import LocalCluster

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(args.threads)
    dataset = make_demo_dataset(workdir / "dataset", seed=SEED)
    config_fields: dict[str, Any] = {
        "dataset_path": str(dataset.path),
        "model": MODEL,
        "image_size": IMAGE_SIZE,
        "batch_size": BATCH_SIZE,
        "epochs": args.epochs,
        "log_every_steps": 1,
        "seed": SEED,
        "device": device,
    }
    config = FinetuneConfig(**config_fields)
    spec = {
        "name": "platform-overhead",
        "kind": "finetune",
        "config": config_fields,
        "resources": {"cpus": args.threads, "gpus": 1 if device == "cuda" else 0},
        "max_attempts": 1,
    }
    worker_env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    print(f"measuring worker start-up ({sys.executable})", flush=True)
    report = Report(
        settings={
            "model": MODEL,
            "image_size": IMAGE_SIZE,
            "batch_size": BATCH_SIZE,
            "epochs": args.epochs,
            "log_every_steps": 1,
            "seed": SEED,
            "device": device,
            "threads": args.threads,
            "train_images": sum(dataset.train_counts.values()),
            "val_images": sum(dataset.val_counts.values()),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        },
        python_startup_s=timed_python("pass", worker_env),
        worker_import_s=timed_python("import matrec.agent.training.finetune", worker_env),
        cluster_start_s=0.0,
    )

    print("starting a coordinator and one agent", flush=True)
    started = time.perf_counter()
    cluster = LocalCluster(
        workdir / "cluster",
        agents=1,
        agent_cpus=float(args.threads),
        agent_gpus=1 if device == "cuda" else 0,
        agent_name_prefix="bench-agent",
    )
    with cluster:
        report.cluster_start_s = time.perf_counter() - started
        with cluster.client() as client:
            for index in range(args.repeat):
                print(f"round {index + 1}/{args.repeat}: in-process run", flush=True)
                local = run_in_process(config, workdir / f"in-process-{index}")
                print(f"round {index + 1}/{args.repeat}: platform run", flush=True)
                platform_s, job, submitted_at = run_platform(client, spec)
                stamps = [
                    (m.key, m.step, m.time.timestamp())
                    for m in client.job_metrics(job.id)
                    if m.time is not None
                ]
                first_step = [at for key, step, at in stamps if key == "train/loss" and step == 1]
                if not first_step:
                    raise SystemExit(f"job {job.id} stored no train/loss metric for step 1")
                last_metric = max(at for _, _, at in stamps)
                finished = epoch_seconds(job.finished_at)
                report.rounds.append(
                    Round(
                        in_process_s=local.seconds,
                        in_process_first_step_s=local.first_step_s,
                        in_process_training_s=local.training_s,
                        in_process_val_accuracy=local.val_accuracy,
                        platform_s=platform_s,
                        platform_val_accuracy=float(job.result.get("val_accuracy", float("nan"))),
                        job_id=job.id,
                        submit_to_first_step_s=min(first_step) - submitted_at,
                        submit_to_assigned_s=since(submitted_at, first_event_time(job, "assigned")),
                        submit_to_started_s=since(submitted_at, first_event_time(job, "started")),
                        submit_to_finished_s=since(submitted_at, finished),
                        platform_training_s=last_metric - min(first_step),
                        last_metric_to_finished_s=since(last_metric, finished),
                        steps=local.steps,
                    )
                )
    return report


def _fmt(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if unit == "x" else f"{value:.2f} s"


def print_table(report: Report) -> None:
    s = report.settings
    n = len(report.rounds)
    label = "median of " + str(n) if n > 1 else "value"
    m = report.median
    rows: list[tuple[str, str]] = [
        ("in-process fine-tune (run_finetune)", _fmt(m("in_process_s"))),
        ("through the platform (submit -> succeeded)", _fmt(m("platform_s"))),
        ("overhead ratio (platform / in-process)", _fmt(m("overhead_ratio"), "x")),
        ("extra seconds (platform - in-process)", _fmt(_difference(report))),
        ("submit -> worker's first step (agent stamp)", _fmt(m("submit_to_first_step_s"))),
        ("  in-process: call -> first step", _fmt(m("in_process_first_step_s"))),
        ("  submit -> task assigned (coordinator)", _fmt(m("submit_to_assigned_s"))),
        ("  submit -> worker started (coordinator)", _fmt(m("submit_to_started_s"))),
        ("  submit -> job finished (coordinator)", _fmt(m("submit_to_finished_s"))),
        ("training span, first -> last metric: platform", _fmt(m("platform_training_s"))),
        ("  the same, in-process", _fmt(m("in_process_training_s"))),
        ("last metric -> job finished (coordinator)", _fmt(m("last_metric_to_finished_s"))),
        ("worker start-up: python -c pass", _fmt(report.python_startup_s)),
        ("worker start-up: python + import torch/training", _fmt(report.worker_import_s)),
        ("local cluster start (coordinator + 1 agent)", _fmt(report.cluster_start_s)),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    print(
        f"{s['model']}, {s['image_size']} px, batch {s['batch_size']}, {s['epochs']} epochs "
        f"({report.rounds[0].steps} steps), {s['train_images']} train / {s['val_images']} val "
        f"images, device {s['device']}{' (' + s['gpu'] + ')' if s['gpu'] else ''}, "
        f"{s['threads']} torch thread(s); {s['cpu_count']} CPUs, torch {s['torch']}"
    )
    print(f"{'measure'.ljust(width)}  {label}")
    print(f"{'-' * width}  {'-' * max(len(label), 9)}")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    accuracies = [(r.in_process_val_accuracy, r.platform_val_accuracy) for r in report.rounds]
    print(
        "val accuracy (in-process / platform): "
        + ", ".join(f"{a:.3f} / {b:.3f}" for a, b in accuracies)
    )
    print(
        "Times are wall clock. The first-step time is stamped by the agent when it reads the "
        "worker's event."
    )


def _difference(report: Report) -> float | None:
    if not report.rounds:
        return None
    return statistics.median(r.platform_s - r.in_process_s for r in report.rounds)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = benchmark(args, args.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="matrec-bench-") as tmp:
            report = benchmark(args, Path(tmp))
    print_table(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
