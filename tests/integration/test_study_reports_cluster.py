"""Study reports on a real cluster: a small ASHA-pruned study of diagnostic trials on two agents,
reported in JSON (checked against the study the coordinator returns), PNG and HTML, the HTML
opened in headless Chromium (Debian's `chromium`)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from matrec.sdk.local_cluster import LocalCluster
from matrec.sdk.reports import (
    StudyReport,
    export_study_report,
    fetch_study_report,
    load_schema,
)
from matrec.sdk.types import Study
from PIL import Image
from test_reports_cluster import chromium, console_errors

pytestmark = pytest.mark.slow

STUDY: dict[str, Any] = {
    "name": "report <study>",
    "trial": {"kind": "diagnostic", "config": {"steps": 4}},
    "search_space": {
        "score": {"type": "float", "min": 0.0, "max": 1.0},
        "duration_seconds": {"type": "categorical", "choices": [0.5, 1.0]},
    },
    "algorithm": "random",
    "max_trials": 6,
    "max_parallel": 2,
    "seed": 7,
    "pruner": {"kind": "asha", "min_resource": 1, "reduction_factor": 2},
}
CHARTS = ["chart-history", "chart-params", "chart-intermediate"]


@pytest.fixture(scope="module")
def running_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("study-reports")
    with LocalCluster(root / "cluster", agents=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def finished(running_cluster: LocalCluster) -> tuple[Study, StudyReport]:
    """The finished study as `get_study` returns it, and its report."""
    with running_cluster.client() as client:
        created = client.create_study(STUDY)
        final = client.wait_study(created.id, timeout=120)
        assert final.state == "completed", final.error
        report = fetch_study_report(client, created.id)
        study = client.get_study(created.id)
    return study, report


def test_cli_writes_every_format(
    running_cluster: LocalCluster, finished: tuple[Study, StudyReport], tmp_path: Path
) -> None:
    study, _ = finished
    ctl = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]
    for fmt in ("html", "json", "png"):
        out = tmp_path / f"study.{fmt}"
        run = subprocess.run(
            [*ctl, "-c", running_cluster.address, "report", study.id, "--format", fmt, "-o", out],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr
        assert f"study {study.id} (completed): {fmt} report written" in run.stdout
        assert out.stat().st_size > 1000
    document = json.loads((tmp_path / "study.json").read_text())
    jsonschema.validate(document, load_schema())
    assert document["type"] == "study_report"
    missing = subprocess.run(
        [*ctl, "-c", running_cluster.address, "report", "study-nope", "-o", tmp_path / "x"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "not found" in missing.stdout + missing.stderr


def test_json_report_matches_the_study(finished: tuple[Study, StudyReport]) -> None:
    study, report = finished
    document = json.loads(export_study_report(report, "json"))
    jsonschema.validate(document, load_schema(), cls=jsonschema.Draft202012Validator)
    assert document["type"] == "study_report"
    head = document["study"]
    assert (head["id"], head["name"], head["state"]) == (study.id, study.name, "completed")
    assert (head["algorithm"], head["objective"], head["direction"]) == (
        "random",
        "diagnostic/score",
        "maximize",
    )
    assert head["pruner"]["kind"] == "asha" and head["trial_kind"] == "diagnostic"
    assert head["max_trials"] == 6 and head["max_parallel"] == 2
    assert len(study.trials) == 6
    counts = {
        state: sum(t.state == state for t in study.trials) for state in document["trial_counts"]
    }
    assert document["trial_counts"] == counts
    assert counts["completed"] >= 1

    # Best first, and every number the study's own.
    assert [t["number"] for t in document["trials"]] == [t.number for t in study.ranked()]
    trials = {t.number: t for t in study.trials}
    for entry in document["trials"]:
        trial = trials[entry["number"]]
        assert entry["state"] == trial.state and entry["job_id"] == trial.job_id
        assert entry["params"] == trial.params
        assert entry["objective_value"] == trial.objective_value
        assert (entry["pruned_rung"], entry["pruned_resource"]) == (
            trial.pruned_rung,
            trial.pruned_resource,
        )
        assert entry["error"] == trial.error
        assert entry["intermediate"] == [[v.resource, v.value] for v in trial.intermediate]
        assert trial.params["duration_seconds"] in (0.5, 1.0)
        if trial.state == "completed":
            assert len(entry["intermediate"]) == 4
    best = study.best
    assert best is not None and document["best_trial"] == {
        "number": best.number,
        "objective_value": best.objective_value,
        "params": best.params,
        "job_id": best.job_id,
    }
    completed = [t.objective_value for t in study.trials if t.state == "completed"]
    assert best.objective_value == max(v for v in completed if v is not None)


def test_png_report(finished: tuple[Study, StudyReport]) -> None:
    _, report = finished
    image = Image.open(io.BytesIO(export_study_report(report, "png")))
    image.load()
    assert image.format == "PNG" and image.size[0] > image.size[1] > 500
    assert len(image.convert("L").getcolors(256) or []) > 10, "the image is blank"


def test_html_report_in_chromium(finished: tuple[Study, StudyReport], tmp_path: Path) -> None:
    study, report = finished
    out = tmp_path / "study.html"
    out.write_bytes(export_study_report(report, "html"))
    html = out.read_text()
    assert not re.search(r"https?://", html) and "<script" not in html
    assert "report &lt;study&gt;" in html

    shot = tmp_path / "shot.png"
    screenshot = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", out.as_uri())
    assert shot.is_file(), screenshot.stderr
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 1600)
    assert len(image.getcolors(256) or []) > 10, "the screenshot is blank"

    dom = chromium(tmp_path, "--dump-dom", out.as_uri())
    images = re.findall(r'<img id="(chart-[\w-]+)"[^>]*src="data:image/png;base64,', dom.stdout)
    assert images == CHARTS
    assert study.id in dom.stdout
    best = study.best
    assert best is not None and f"matrec-ctl report {best.job_id}" in dom.stdout
    for trial in study.trials:
        assert trial.job_id in dom.stdout
    for run in (screenshot, dom):
        assert console_errors(run) == [], run.stderr
