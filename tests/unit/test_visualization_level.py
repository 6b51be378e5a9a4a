"""visualization_level (the seed's setting): what a fine-tune reports and stores, and what its
HTML report shows."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from matrec.agent.training.finetune import run_finetune
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.reports import export_report
from matrec.sdk.reports.model import build_report
from matrec.sdk.types import Metric
from test_finetune import RecordingReporter, make_config
from test_reports import make_job, make_metrics


def keys_reported(dataset: DemoDatasetInfo, tmp_path: Path, level: str) -> set[str]:
    reporter = RecordingReporter()
    config = make_config(dataset.path, epochs=1, visualization_level=level)
    run_finetune(config, tmp_path / level, reporter)
    return {key for _, values in reporter.metrics_calls for key in values}


def test_levels_decide_what_a_finetune_reports(
    small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    minimal = keys_reported(small_dataset, tmp_path, "minimal")
    standard = keys_reported(small_dataset, tmp_path, "standard")
    detailed = keys_reported(small_dataset, tmp_path, "detailed")
    assert "train/loss" not in minimal and "val/accuracy" in minimal
    assert standard == minimal | {"train/loss"}
    per_class = {f"val/f1/{name}" for name in small_dataset.classes}
    assert detailed == standard | per_class


def report_html(level: str, extra: list[Metric]) -> str:
    job = make_job()
    config = {**job.spec.config, "visualization_level": level}
    job = dataclasses.replace(job, spec=dataclasses.replace(job.spec, config=config))
    return export_report(build_report(job, make_metrics() + extra), "html").decode()


def test_levels_decide_what_the_html_report_shows() -> None:
    per_class = [
        Metric("t", 1, step, f"val/f1/{name}", value, None)
        for step, value in ((3, 0.5), (6, 0.75))
        for name in ("brick", "metal")
    ]
    minimal = report_html("minimal", [])
    assert re.findall(r"<img ", minimal) == []
    assert "Per class" in minimal  # the numbers stay
    standard = report_html("standard", per_class)
    assert len(re.findall(r"<img ", standard)) == 3
    assert "Per-class F1 by epoch" not in standard
    detailed = report_html("detailed", per_class)
    assert "Per-class F1 by epoch" in detailed
    assert ">0.7500</td>" in detailed and "<th>brick</th>" in detailed
