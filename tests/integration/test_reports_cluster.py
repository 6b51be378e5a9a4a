"""`matrec-ctl report` on a real cluster: a finished 2-epoch fine-tune in HTML, JSON and PNG; the
HTML opened in headless Chromium (Debian's `chromium`)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from matrec.sdk.demo_dataset import make_demo_dataset
from matrec.sdk.local_cluster import LocalCluster
from matrec.sdk.reports import load_schema
from matrec.sdk.types import Job
from PIL import Image
from support.cluster_jobs import finetune_spec
from support.tools import require_tool

pytestmark = pytest.mark.slow

CTL = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def ctl(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    # Wide enough for the comparison table's columns not to be shortened with "…".
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*CTL, "-c", address, *args], capture_output=True, text=True, timeout=90, env=env
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Job]]:
    root = tmp_path_factory.mktemp("reports")
    dataset = make_demo_dataset(
        root / "data", seed=0, patch_size=32, train_per_class=24, val_per_class=8
    )
    with LocalCluster(root / "cluster", agents=1) as cluster, cluster.client() as client:
        job = client.submit_job(finetune_spec(dataset, 2, log_every_steps=3))
        job = client.wait(job.id, timeout=240)
        assert job.state == "succeeded", job.error
        yield cluster, job


def test_json_report(finished: tuple[LocalCluster, Job], tmp_path: Path) -> None:
    cluster, job = finished
    out = tmp_path / "report.json"
    result = ctl(cluster.address, "report", job.id, "--format", "json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    jsonschema.validate(document, load_schema(), cls=jsonschema.Draft202012Validator)
    assert document["job"]["id"] == job.id and document["job"]["state"] == "succeeded"
    assert document["final_val_accuracy"] == job.result["val_accuracy"]
    assert document["evaluation"]["accuracy"] == pytest.approx(job.result["val_accuracy"])
    assert [row["epoch"] for row in document["epochs"]] == [1, 2]
    assert len(document["curves"]["val/accuracy"]) == 2


def test_png_report(finished: tuple[LocalCluster, Job], tmp_path: Path) -> None:
    cluster, job = finished
    out = tmp_path / "report.png"
    result = ctl(cluster.address, "report", job.id, "--format", "png", "--out", str(out))
    assert result.returncode == 0, result.stderr
    image = Image.open(io.BytesIO(out.read_bytes()))
    image.load()
    assert image.format == "PNG" and image.size[0] > image.size[1] > 100
    # Three panels side by side (loss, accuracy, confusion matrix): each must hold coloured
    # marks (curves, the matrix's cells), not only grey axes and text, as a blank chart would.
    rgb = image.convert("RGB")
    width, height = rgb.size
    for panel, name in enumerate(("loss", "accuracy", "confusion matrix")):
        strip = rgb.crop((panel * width // 3, 0, (panel + 1) * width // 3, height))
        coloured = sum(
            count
            for count, (r, g, b) in strip.getcolors(width * height) or []
            if max(r, g, b) - min(r, g, b) > 60
        )
        assert coloured > 200, f"the {name} panel has {coloured} coloured pixels: blank?"


def test_html_report_in_chromium(finished: tuple[LocalCluster, Job], tmp_path: Path) -> None:
    cluster, job = finished
    out = tmp_path / "report.html"
    result = ctl(cluster.address, "report", job.id, "--format", "html", "--out", str(out))
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    assert not re.search(r"https?://", html)

    shot = tmp_path / "shot.png"
    screenshot = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", out.as_uri())
    assert shot.is_file(), screenshot.stderr
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 1600)
    assert len(image.getcolors(256) or []) > 10, "the screenshot is blank"

    dom = chromium(tmp_path, "--dump-dom", out.as_uri())
    images = re.findall(r'<img id="(chart-[\w-]+)"[^>]*src="data:image/png;base64,', dom.stdout)
    assert images == ["chart-curves", "chart-confusion-counts", "chart-confusion-normalized"]
    assert job.id in dom.stdout
    for run in (screenshot, dom):
        assert console_errors(run) == [], run.stderr


def test_compare(finished: tuple[LocalCluster, Job], tmp_path: Path) -> None:
    cluster, job = finished
    table = ctl(cluster.address, "compare", job.id, job.id)
    assert table.returncode == 0, table.stderr
    assert job.id in table.stdout and "resnet18" in table.stdout
    out = tmp_path / "compare.json"
    result = ctl(cluster.address, "compare", job.id, "--format", "json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    assert document["jobs"][0]["final_val_accuracy"] == job.result["val_accuracy"]


def test_unknown_job(finished: tuple[LocalCluster, Job], tmp_path: Path) -> None:
    cluster, _ = finished
    for args in (
        ["report", "job-nope", "--out", str(tmp_path / "x.html")],
        ["compare", "job-nope"],
    ):
        result = ctl(cluster.address, *args)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        assert "job-nope" in lines[0]
    assert not (tmp_path / "x.html").exists()


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [require_tool("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def console_errors(run: subprocess.CompletedProcess[str]) -> list[str]:
    """Chromium's log lines about script errors, failed loads and console errors."""
    return [
        line
        for line in run.stderr.splitlines()
        if "Uncaught" in line
        or "Failed to load resource" in line
        or re.search(r"CONSOLE.*error", line, re.IGNORECASE)
    ]
