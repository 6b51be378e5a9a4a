"""`matrec-ctl hpo` against a real coordinator and agent: a small diagnostic study with ASHA run
through `hpo submit --wait`, then show/best/list/watch/cancel, bad input and unknown ids. The
numbers printed must be the stored ones (`Client.get_study`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from matrec.sdk.ctl.study_view import format_objective
from matrec.sdk.local_cluster import LocalCluster
from matrec.sdk.types import Study
from support.tools import require_tool

CTL = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]
SPACE = '{"score": {"type": "float", "min": 0, "max": 1}}'
#: 6 trials of 6 steps (1.5 s each), 2 at a time, ASHA halving at every rung: about 5 s.
STUDY_ARGS = [
    "--kind", "diagnostic", "--set", "steps=6", "--set", "duration_seconds=1.5",
    "--space", SPACE, "--algorithm", "random", "--max-trials", "6", "--max-parallel", "2",
    "--pruner", "asha", "--min-resource", "1", "--reduction-factor", "2",
]  # fmt: skip
UNKNOWN = (
    "error: study 'study-000000000000' not found; `matrec-ctl hpo list` lists the known studies"
)


def ctl(
    address: str, *args: str, columns: int = 200, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [*CTL, "-c", address, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def rows(text: str) -> dict[int, str]:
    """The trial table's rows by trial number."""
    found: dict[int, str] = {}
    for line in text.splitlines():
        match = re.match(r"[\s│]*(\d+)\s{2,}\S", line)
        if match:
            found[int(match.group(1))] = line
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("hpo"), agents=1, agent_cpus=2) as running:
        yield running


@pytest.fixture(scope="module")
def finished(cluster: LocalCluster) -> tuple[subprocess.CompletedProcess[str], Study]:
    """The study, run to its end by `hpo submit --wait`, and as the coordinator stores it."""
    result = ctl(cluster.address, "hpo", "submit", *STUDY_ARGS, "--name", "cli-asha", "--wait")
    assert result.returncode == 0, result.stderr
    study_id = result.stdout.splitlines()[0]
    with cluster.client() as client:
        return result, client.get_study(study_id)


def test_submit_wait_runs_the_study(
    finished: tuple[subprocess.CompletedProcess[str], Study],
) -> None:
    result, study = finished
    assert re.fullmatch(r"study-[0-9a-f]{12}", study.id)
    assert study.state == "completed" and study.name == "cli-asha"
    assert len(study.trials) == 6
    assert study.spec["algorithm"] == "random" and study.spec["max_parallel"] == 2
    assert study.spec["pruner"]["kind"] == "asha" and study.spec["pruner"]["reduction_factor"] == 2
    assert study.spec["trial"]["config"] == {"steps": 6, "duration_seconds": 1.5}
    assert any(t.state == "pruned" for t in study.trials), "ASHA pruned nothing"
    best = study.best
    assert best is not None
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith(f"study {study.id} completed after")
    expected = (
        f"best trial {best.number}: diagnostic/score {format_objective(best.objective_value)}"
    )
    assert expected in summary
    assert "Traceback" not in result.stderr


def test_show_prints_the_stored_values_best_first(
    cluster: LocalCluster, finished: tuple[subprocess.CompletedProcess[str], Study]
) -> None:
    _, study = finished
    shown = ctl(cluster.address, "hpo", "show", study.id)
    assert shown.returncode == 0, shown.stderr
    table = rows(shown.stdout)
    assert list(table) == [t.number for t in study.ranked()]
    for trial in study.trials:
        row = table[trial.number]
        assert trial.job_id in row
        assert format_objective(trial.objective_value) in row
        if trial.state == "pruned":
            assert f"pruned @ rung {trial.pruned_rung} (resource {trial.pruned_resource})" in row
    assert "diagnostic/score (maximize)" in shown.stdout
    assert "asha (min resource 1, reduction factor 2)" in shown.stdout
    assert "6/6 trials finished" in shown.stdout

    as_json = ctl(cluster.address, "hpo", "show", study.id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["id"] == study.id and data["best_trial_number"] == study.best_trial_number
    assert {t["number"]: t["objective_value"] for t in data["trials"]} == {
        t.number: t.objective_value for t in study.trials
    }


def test_best_prints_the_best_params(
    cluster: LocalCluster, finished: tuple[subprocess.CompletedProcess[str], Study]
) -> None:
    _, study = finished
    best = study.best
    assert best is not None
    result = ctl(cluster.address, "hpo", "best", study.id)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == best.params
    assert f"trial {best.number}: diagnostic/score" in result.stderr

    as_args = ctl(cluster.address, "hpo", "best", study.id, "--format", "args")
    assert as_args.returncode == 0, as_args.stderr
    assert as_args.stdout.split() == ["--set", f"score={best.params['score']!r}"]


def test_list_and_watch_of_a_finished_study(
    cluster: LocalCluster, finished: tuple[subprocess.CompletedProcess[str], Study]
) -> None:
    _, study = finished
    listed = ctl(cluster.address, "hpo", "list")
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if study.id in line)
    assert "cli-asha" in line and "completed" in line and "random" in line and "6/6" in line
    best = study.best
    assert best is not None and format_objective(best.objective_value) in line
    as_json = ctl(cluster.address, "hpo", "list", "--json")
    assert study.id in [s["id"] for s in json.loads(as_json.stdout)]

    # `matrec-ctl watch` takes a study id too; in a pipe it prints plain lines.
    for command in (["watch"], ["hpo", "watch"]):
        watched = ctl(cluster.address, *command, study.id)
        assert watched.returncode == 0, watched.stderr
        lines = watched.stdout.splitlines()
        assert sum(" trial " in line and "] trial" in line for line in lines) == 6
        assert lines[-1].startswith(f"study {study.id} completed")


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--kind", "diagnostic", "--space", '{"score": {"type": "floot"}}'], "search_space.score.type"),  # noqa: E501
        (["--kind", "diagnostic", "--space", '{"score": {"type": "float", "min": 2, "max": 1}}'], "search_space.score"),  # noqa: E501
        (["--kind", "diagnostic", "--space", "{}"], "search_space"),
        (["--kind", "diagnostic", "--space", SPACE, "--set", "colour=red"], "trial.config.colour"),
        (["--kind", "diagnostic", "--space", SPACE, "--objective", "val/accuracy"], "objective"),
        (["--kind", "diagnostic", "--space", SPACE, "--reduction-factor", "2"], "--reduction-factor"),  # noqa: E501
        (["--space", '{"learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2}}'], "trial.config.dataset_path"),  # noqa: E501
        (["--space", "no-such-space.json"], "--space"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_the_field(
    cluster: LocalCluster, args: list[str], field: str
) -> None:
    with cluster.client() as client:
        before = len(client.list_studies())
        result = ctl(cluster.address, "hpo", "submit", *args)
        assert len(client.list_studies()) == before
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), result.stderr
    assert result.stdout == ""


def test_a_dataset_the_coordinator_cannot_see(cluster: LocalCluster) -> None:
    space = '{"learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2}}'
    result = ctl(
        cluster.address, "hpo", "submit", "--dataset", "/nonexistent/wood", "--space", space
    )
    assert result.returncode == 2
    assert re.fullmatch(
        r"error: (trial\.)?config\.dataset_path: .*not a directory.*\n", result.stderr
    )


@pytest.mark.parametrize("command", ["show", "best", "cancel", "watch"])
def test_unknown_study(cluster: LocalCluster, command: str) -> None:
    result = ctl(cluster.address, "hpo", command, "study-000000000000")
    assert result.returncode == 1
    assert result.stderr.strip() == UNKNOWN


def test_spec_file_flags_and_cancel(cluster: LocalCluster, tmp_path: Path) -> None:
    spec_file = tmp_path / "study.json"
    spec_file.write_text(
        json.dumps(
            {
                "name": "from-file",
                "trial": {"kind": "diagnostic", "config": {"duration_seconds": 60, "steps": 60}},
                "search_space": {"score": {"type": "float", "min": 0, "max": 1}},
                "algorithm": "tpe",
                "max_trials": 50,
            }
        )
    )
    submitted = ctl(
        cluster.address, "hpo", "submit", "--spec", str(spec_file), "--max-trials", "3",
        "--max-parallel", "1", "--pruner", "median", "--min-trials", "2",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    study_id = submitted.stdout.strip()
    with cluster.client() as client:
        study = client.get_study(study_id)
        assert study.name == "from-file" and study.spec["algorithm"] == "tpe"
        assert study.spec["max_trials"] == 3 and study.spec["max_parallel"] == 1
        assert study.spec["pruner"]["kind"] == "median" and study.spec["pruner"]["min_trials"] == 2

        none_yet = ctl(cluster.address, "hpo", "best", study_id)
        assert none_yet.returncode == 1 and none_yet.stdout == ""
        assert none_yet.stderr.startswith(f"error: study {study_id} has no completed trial yet")

        cancelled = ctl(cluster.address, "hpo", "cancel", study_id, "--reason", "test")
        assert cancelled.returncode == 0, cancelled.stderr
        assert study_id in cancelled.stdout
        assert client.wait_study(study_id, timeout=30).state == "cancelled"

    again = ctl(cluster.address, "hpo", "cancel", study_id)
    assert again.returncode == 1 and again.stderr.startswith("error: ")
    assert len(again.stderr.strip().splitlines()) == 1
    watched = ctl(cluster.address, "watch", study_id)
    assert watched.returncode == 1
    assert watched.stdout.splitlines()[-1].startswith(f"study {study_id} cancelled")


def test_live_view_in_a_terminal(cluster: LocalCluster) -> None:
    """`hpo submit --watch` in tmux: the view updates while trials run and ends on the table."""
    require_tool("tmux")
    session = f"matrec-hpo-{time.monotonic_ns()}"
    command = " ".join(
        [*CTL[:2], f"'{CTL[2]}'", "-c", cluster.address, "hpo", "submit"]
        + [f"'{arg}'" for arg in STUDY_ARGS]
        + ["--seed", "1", "--name", "live", "--watch", "; echo EXIT=$?; sleep 60"]
    )
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "110", "-y", "35", command], check=True
    )
    screens: list[str] = []
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            screens.append(screen)
            if "EXIT=" in screen:
                break
            time.sleep(0.3)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    final = screens[-1]
    assert "EXIT=0" in final, final
    distinct = list(dict.fromkeys(s for s in screens if "trials" in s))
    assert len(distinct) >= 3, f"the view did not update: {distinct[-1:]}"
    assert any("running" in s and "/6 trials" in s and "6/6 trials" not in s for s in distinct)
    study_id = re.search(r"submitted study (study-[0-9a-f]{12})", final)
    assert study_id is not None, final
    with cluster.client() as client:
        study = client.get_study(study_id.group(1))
    assert study.state == "completed"
    assert "6/6 trials" in final
    # The last frame of the live view is the stored study, best first.
    assert list(rows(final)) == [t.number for t in study.ranked()]
    best = study.best
    assert best is not None
    assert f"best so far trial {best.number}: {format_objective(best.objective_value)}" in final
    assert f"study {study.id} completed" in final
