"""README's five-minute tour, run as it stands: its shell block, in one bash with -euo pipefail,
against a real coordinator and agent that the tour starts and stops itself."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from support.network import free_port
from support.shell_blocks import run_block, shell_block

ROOT = Path(__file__).resolve().parents[2]
# The tour's own knobs, at their smallest: it must run as written, not train well.
TINY = {"EPOCHS": "1", "IMAGE_SIZE": "32", "TRIALS": "2"}


def tour_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MATREC_", "SUPABASE_"))}
    venv_bin = str(Path(sys.executable).parent)
    return {
        **env,
        **TINY,
        "PATH": f"{venv_bin}:{env['PATH']}",
        "PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
    }


def test_the_tour_runs_as_written(tmp_path: Path) -> None:
    script = shell_block(ROOT / "README.md", "## A five-minute tour")
    code, output = run_block(script, tmp_path, tour_env(), timeout=900)
    assert code == 0, output[-6000:]

    tour = tmp_path / "matrec-tour"
    models = list((tour / "models").iterdir())
    assert [m.suffix for m in models] == [".pt"] and models[0].stat().st_size > 100_000, models
    for report in ("report.html", "study.html"):
        assert (tour / report).read_text().lstrip().lower().startswith("<!doctype html"), report
    with (tour / "labelled.csv").open() as rows:
        labelled = list(csv.DictReader(rows))
    assert len(labelled) == 5 and all(row["label"] for row in labelled), labelled
    assert "cancel requested" in output, output[-6000:]
