"""`matrec-ctl hpo` rendering from constructed studies (recorded Rich consoles), and how
`hpo submit` assembles a study spec from a file and flags."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from matrec.common.studies import ALGORITHMS, PRUNERS
from matrec.sdk.ctl.hpo import Algorithm, PrunerKind, StudyFlags, build_study_spec
from matrec.sdk.ctl.study_view import (
    StudyPrinter,
    format_objective,
    render_live,
    studies_table,
    study_detail,
    study_summary,
    trial_state_text,
    trials_table,
)
from matrec.sdk.errors import InvalidSpecError
from matrec.sdk.types import IntermediateValue, Study, Trial
from rich.console import Console, RenderableType

STAMP = re.compile(r"^(\d{2}:\d{2}:\d{2}|\d{4}-\d{2}-\d{2} \d{2}:\d{2}) ")
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.7 GiB total capacity)\n"
    "Traceback (most recent call last): ..."
)


def _trial(
    number: int,
    state: str,
    value: float | None = None,
    *,
    lr: float = 1e-3,
    units: int = 128,
    optimizer: str = "adamw",
    rung: int | None = None,
    resource: int | None = None,
    error: str = "",
    curve: tuple[float, ...] = (),
) -> Trial:
    return Trial(
        number=number,
        job_id=f"job-{number:012d}",
        params={"learning_rate": lr, "dense_units": units, "optimizer": optimizer},
        state=state,
        objective_value=value,
        pruned_rung=rung,
        pruned_resource=resource,
        error=error,
        intermediate=[
            IntermediateValue(resource=i, step=10 * i, value=v) for i, v in enumerate(curve, 1)
        ],
        job_state="running" if state == "running" else "succeeded",
        created_at=T0 + timedelta(seconds=number),
        finished_at=None if state == "running" else T0 + timedelta(seconds=30 + number),
    )


TRIALS = [
    _trial(0, "completed", 0.8123456789, lr=0.00123456, units=128),
    _trial(1, "pruned", 0.42, lr=0.0091, units=448, optimizer="sgd", rung=0, resource=1),
    _trial(2, "completed", 0.9345678, lr=0.000345, units=256),
    _trial(3, "failed", None, lr=0.0056, units=512, error=OOM),
    _trial(4, "running", None, lr=0.0002, units=64, optimizer="sgd", curve=(0.5, 0.6123)),
    _trial(5, "pruned", 0.7, lr=0.004, units=320, rung=1, resource=3),
]
#: Completed by value, then pruned by value, then the rest by number.
RANKED = [2, 0, 5, 1, 3, 4]


def _study(trials: list[Trial] = TRIALS, **spec: Any) -> Study:
    full_spec = {
        "name": "wood-lr",
        "trial": {"kind": "finetune", "config": {"dataset_path": "/data/wood", "epochs": 9}},
        "search_space": {
            "learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": True},
            "dense_units": {"type": "int", "min": 64, "max": 512, "step": 64},
            "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
        },
        "algorithm": "tpe",
        "objective": "val/accuracy",
        "direction": "maximize",
        "max_trials": 6,
        "max_parallel": 2,
        "seed": 7,
        "pruner": {"kind": "asha", "min_resource": 1, "reduction_factor": 3, "min_trials": 3},
        **spec,
    }
    completed = [t for t in trials if t.state == "completed" and t.objective_value is not None]
    sign = -1.0 if full_spec["direction"] == "maximize" else 1.0
    best = min(completed, key=lambda t: sign * (t.objective_value or 0.0), default=None)
    return Study(
        id="study-0123456789ab",
        name=str(full_spec["name"]),
        state="running",
        spec=full_spec,
        created_at=T0,
        finished_at=None,
        error="",
        trials=trials,
        best_trial_number=None if best is None else best.number,
    )


def _text(renderable: RenderableType, width: int = 200) -> str:
    console = Console(record=True, width=width, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def _rows(text: str) -> dict[int, str]:
    """Table rows by trial number (a row starts with the number)."""
    rows: dict[int, str] = {}
    for line in text.splitlines():
        match = re.match(r"[\s│]*(\d+)\s{2,}", line)
        if match:
            rows[int(match.group(1))] = line
    return rows


def _order(text: str) -> list[int]:
    return list(_rows(text))


# -- the trial table ---------------------------------------------------------------------------


def test_trials_are_listed_best_first() -> None:
    assert _order(_text(trials_table(_study()))) == RANKED


def test_minimize_lists_the_lowest_first() -> None:
    trials = [
        _trial(0, "completed", 0.9),
        _trial(1, "completed", 0.3),
        _trial(2, "pruned", 0.1, rung=0, resource=1),
        _trial(3, "completed", 0.5),
    ]
    study = _study(trials, objective="val/loss", direction="minimize")
    text = _text(trials_table(study))
    assert _order(text) == [1, 3, 0, 2]
    assert "OBJECTIVE ↓" in text


def test_pruned_failed_and_running_are_marked() -> None:
    rows = _rows(_text(trials_table(_study())))
    assert "pruned @ rung 0 (resource 1)" in rows[1]
    assert "pruned @ rung 1 (resource 3)" in rows[5]
    # Failed: the start of the first line of the error, cut with an ellipsis.
    assert "failed: CUDA out of memory. Tri…" in rows[3]
    assert "Traceback" not in rows[3]
    # Running: its newest report and the resource it was at.
    assert "0.6123 @ 2" in rows[4]
    assert "completed" in rows[0] and "completed" in rows[2]


def test_failed_is_red_and_pruned_yellow() -> None:
    assert "red" in str(trial_state_text(TRIALS[3]).style)
    assert "yellow" in str(trial_state_text(TRIALS[1]).style)


def test_numbers_shown_are_the_trials_numbers() -> None:
    rows = _rows(_text(trials_table(_study())))
    for trial in TRIALS:
        row = rows[trial.number]
        if trial.objective_value is not None:
            assert format_objective(trial.objective_value) in row
        assert trial.job_id in row
        assert str(trial.params["dense_units"]) in row
        assert trial.params["optimizer"] in row
    assert "0.812346" in rows[0] and "0.934568" in rows[2]  # six significant digits
    assert "0.001235" in rows[0] and "0.000345" in rows[2]  # hyperparameters: four


def test_narrow_terminal_drops_hyperparameter_columns_from_the_right() -> None:
    study = _study()
    wide = _text(trials_table(study, width=200), width=200)
    assert "DENSE_UNITS" in wide and "LEARNING_RATE" in wide and "OPTIMIZER" in wide
    assert "not shown" not in wide

    narrow = _text(trials_table(study, width=105), width=105)
    assert all(len(line.rstrip()) <= 105 for line in narrow.splitlines())
    assert "OPTIMIZER" not in narrow and "LEARNING_RATE" in narrow
    assert "not shown, too narrow: optimizer (" in narrow
    # The trial number, state, objective and job id stay, and the order is the same.
    assert _order(narrow) == RANKED
    assert "pruned @ rung 1 (resource 3)" in narrow and TRIALS[2].job_id in narrow

    tiny = _text(trials_table(study, width=60), width=60)
    assert not any(name in tiny for name in ("DENSE_UNITS", "LEARNING_RATE", "OPTIMIZER"))
    assert "not shown, too narrow: dense_units, learning_rate, optimizer" in tiny
    assert _order(tiny) == RANKED


def test_row_limit_keeps_the_best_and_the_running() -> None:
    text = _text(trials_table(_study(), max_rows=3))
    assert _order(text) == [2, 0, 4]
    assert "3 more trials (matrec-ctl hpo show study-0123456789ab lists them)" in text


def test_no_trials_yet() -> None:
    assert "no trials yet" in _text(trials_table(_study([])))


# -- show, list, live, summary -----------------------------------------------------------------


def test_detail_header() -> None:
    text = _text(study_detail(_study()))
    assert "tpe (seed 7)" in text
    assert "val/accuracy (maximize)" in text
    assert "asha (min resource 1, reduction factor 3)" in text
    assert "5/6 trials finished · 1 running, 2 completed, 2 pruned, 1 failed" in text
    assert "trial 2: 0.934568" in text
    assert "dataset_path=/data/wood, epochs=9" in text
    assert _order(text) == RANKED


def test_detail_without_a_completed_trial() -> None:
    study = _study([_trial(0, "running", None)])
    assert study.best is None
    assert "no completed trial yet" in _text(study_detail(study))


def test_studies_table() -> None:
    finished = replace(_study(), id="study-bbbbbbbbbbbb", state="completed")
    empty = replace(_study([]), id="study-cccccccccccc", name="")
    text = _text(studies_table([finished, empty]), width=120)
    line = next(line for line in text.splitlines() if "study-bbbbbbbbbbbb" in line)
    assert "completed" in line and "tpe" in line and "5/6" in line and "0.934568" in line
    line = next(line for line in text.splitlines() if "study-cccccccccccc" in line)
    assert "0/6" in line and line.rstrip().endswith("-")


def test_live_view_shows_progress_best_and_the_table() -> None:
    text = _text(render_live(_study(), width=120, height=40), width=120)
    assert "5/6 trials" in text
    assert "best so far trial 2: 0.934568" in text
    assert _order(text) == RANKED
    assert all(len(line) <= 120 for line in text.splitlines())


def test_live_view_fits_a_narrow_short_terminal() -> None:
    text = _text(render_live(_study(), width=70, height=14), width=70)
    assert all(len(line.rstrip()) <= 70 for line in text.splitlines())
    assert "OPTIMIZER" not in text
    # 14 lines leave room for 3 rows: the two best and the running trial.
    assert _order(text) == [2, 0, 4]


def test_live_view_before_the_first_update() -> None:
    assert "waiting" in _text(render_live(None))


def test_summary() -> None:
    done = replace(
        _study(), state="completed", finished_at=T0 + timedelta(seconds=95), trials=TRIALS[:4]
    )
    text = _text(study_summary(done))
    assert text.startswith("study study-0123456789ab completed after 1m35s · 4 trials")
    assert "(2 completed, 1 pruned, 1 failed)" in text
    assert "best trial 2: val/accuracy 0.934568" in text
    assert "learning_rate=0.000345" in text


# -- plain lines -------------------------------------------------------------------------------


def test_plain_lines_follow_the_trials() -> None:
    console = Console(record=True, width=300, color_system=None, file=io.StringIO())
    printer = StudyPrinter(console)
    first = _study([_trial(0, "running", None), _trial(1, "running", None)])
    printer.handle(first)
    printer.handle(first)  # nothing changed: nothing printed
    second = _study(
        [
            _trial(0, "completed", 0.8123456789),
            _trial(1, "pruned", 0.42, rung=0, resource=1),
            _trial(2, "failed", None, error=OOM),  # started and ended between two updates
        ]
    )
    printer.handle(second)
    printer.handle(replace(second, state="completed"))
    # Each line starts with its time: HH:MM:SS today, YYYY-MM-DD HH:MM on another day.
    lines = [STAMP.sub("", line, count=1) for line in console.export_text().splitlines()]
    assert lines[0].startswith("study study-0123456789ab (wood-lr): tpe, val/accuracy (maximize)")
    assert lines[1].startswith("trial 0 started (job-000000000000): dense_units=128")
    assert lines[2].startswith("trial 1 started")
    assert lines[3].startswith("trial 2 started")
    assert lines[4].startswith("[1/6] trial 0 completed: val/accuracy 0.812346")
    assert lines[5].startswith("[2/6] trial 1 pruned @ rung 0 (resource 1): val/accuracy 0.42")
    assert lines[6].startswith("[3/6] trial 2 failed: CUDA out of memory")
    assert lines[7] == "best so far: trial 0: 0.812346  dense_units=128, learning_rate=0.001, " + (
        "optimizer=adamw"
    )
    assert lines[8] == "study study-0123456789ab: completed"
    assert len(lines) == 9


# -- `hpo submit`: the spec from a file and flags -----------------------------------------------


def test_the_cli_choices_are_the_specs() -> None:
    assert tuple(a.value for a in Algorithm) == ALGORITHMS
    assert tuple(p.value for p in PrunerKind) == PRUNERS


SPACE = {"score": {"type": "float", "min": 0.0, "max": 1.0}}


def test_flags_build_a_study() -> None:
    flags = StudyFlags(
        kind="diagnostic",
        space=json.dumps(SPACE),
        algorithm="random",
        max_trials=6,
        max_parallel=2,
        pruner="asha",
        min_resource=1,
        reduction_factor=2,
        assignments=["steps=6", "duration_seconds=1.5"],
        gpus=1,
        name="probe",
    )
    assert build_study_spec(None, flags) == {
        "name": "probe",
        "trial": {
            "kind": "diagnostic",
            "config": {"steps": 6, "duration_seconds": 1.5},
            "resources": {"gpus": 1},
        },
        "search_space": SPACE,
        "algorithm": "random",
        "max_trials": 6,
        "max_parallel": 2,
        "pruner": {"kind": "asha", "min_resource": 1, "reduction_factor": 2},
    }


def test_flags_override_the_spec_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "studies"
    folder.mkdir()
    spec_file = folder / "study.json"
    spec_file.write_text(
        json.dumps(
            {
                "name": "from-file",
                "trial": {"config": {"dataset_path": "data/wood", "epochs": 3}},
                "search_space": {"dropout_rate": {"type": "float", "min": 0.0, "max": 0.5}},
                "algorithm": "tpe",
                "max_trials": 40,
                "pruner": {"kind": "median", "min_trials": 5},
            }
        )
    )
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps(SPACE))
    monkeypatch.chdir(tmp_path)
    spec = build_study_spec(
        spec_file, StudyFlags(max_trials=8, space=str(space_file), assignments=["epochs=5"])
    )
    assert spec["name"] == "from-file" and spec["algorithm"] == "tpe"
    assert spec["max_trials"] == 8
    assert spec["search_space"] == SPACE
    # The file's relative path is relative to the file; the kind defaults to finetune.
    assert spec["trial"] == {
        "kind": "finetune",
        "config": {"dataset_path": str(folder / "data" / "wood"), "epochs": 5},
    }
    assert spec["pruner"] == {"kind": "median", "min_trials": 5}
    # A --dataset flag is relative to the current directory.
    spec = build_study_spec(spec_file, StudyFlags(dataset=Path("mine")))
    assert spec["trial"]["config"]["dataset_path"] == str(tmp_path / "mine")


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (StudyFlags(space="{not json"), "--space"),
        (StudyFlags(space="/nonexistent/space.json"), "--space"),
        (StudyFlags(space="[1, 2]"), "--space"),
        (StudyFlags(assignments=["epochs"]), "--set"),
        (StudyFlags(reduction_factor=2), "--reduction-factor"),
        (StudyFlags(pruner="median", reduction_factor=2), "--reduction-factor"),
        (StudyFlags(pruner="asha", min_trials=2), "--min-trials"),
    ],
)
def test_bad_flags_name_the_option(flags: StudyFlags, field: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        build_study_spec(None, flags)
    assert caught.value.field == field
