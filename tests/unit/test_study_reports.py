"""Study reports built from hand-made SDK `Study` objects: the model, the JSON schema, PNG and
HTML output, and studies with nothing completed, one trial or many parameters."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from matrec.sdk.reports import (
    build_study_report,
    export_study_report,
    load_schema,
    validate_document,
)
from matrec.sdk.reports.charts import (
    DPI,
    HISTORY_SIZE,
    INTERMEDIATE_SIZE,
    PNG_SIGNATURE,
    history_png,
    intermediate_png,
    param_grid,
    params_png,
    params_size,
    study_summary_size,
)
from matrec.sdk.reports.model import ReportSchemaError
from matrec.sdk.types import IntermediateValue, Study, Trial
from PIL import Image

WHEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
ERROR = "loss is NaN <script>alert(1)</script> & more"
SPACE: dict[str, Any] = {
    # As the SDK returns it: the search space went through a protobuf Struct (numbers as floats).
    "learning_rate": {"type": "float", "min": 1e-4, "max": 1e-1, "log": True, "step": None},
    "dense_units": {"type": "int", "min": 0.0, "max": 64.0, "step": 32.0, "log": False},
    "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
}


def make_trial(
    number: int,
    state: str,
    params: dict[str, Any],
    objective: float | None,
    curve: list[float],
    *,
    rung: int | None = None,
    resource: int | None = None,
    error: str = "",
) -> Trial:
    return Trial(
        number=number,
        job_id=f"job-{number}",
        params=params,
        state=state,
        objective_value=objective,
        pruned_rung=rung,
        pruned_resource=resource,
        error=error,
        intermediate=[
            IntermediateValue(resource=i + 1, step=(i + 1) * 10, value=v)
            for i, v in enumerate(curve)
        ],
        job_state={"completed": "succeeded", "running": "running", "failed": "failed"}.get(
            state, "cancelled"
        ),
        created_at=WHEN,
        finished_at=None if state == "running" else WHEN,
    )


def make_spec(
    space: dict[str, Any] | None = None, direction: str = "maximize", **extra: Any
) -> dict[str, Any]:
    return {
        "name": "lr sweep",
        "trial": {"kind": "finetune", "config": {"epochs": 4}},
        "search_space": SPACE if space is None else space,
        "algorithm": "tpe",
        "objective": "val/accuracy",
        "direction": direction,
        "seed": 0,
        "max_trials": 10,
        "max_parallel": 2,
        "pruner": {"kind": "asha", "min_resource": 1, "reduction_factor": 2},
        **extra,
    }


def make_trials() -> list[Trial]:
    return [
        make_trial(
            0,
            "completed",
            {"learning_rate": 1e-3, "dense_units": 32, "optimizer": "adamw"},
            0.7,
            [0.3, 0.5, 0.6, 0.7],
        ),
        make_trial(
            1,
            "pruned",
            {"learning_rate": 3e-2, "dense_units": 64, "optimizer": "sgd"},
            0.2,
            [0.1, 0.2],
            rung=1,
            resource=2,
            error="pruned at rung 1 (resource 2)",
        ),
        make_trial(
            2,
            "completed",
            {"learning_rate": 3e-4, "dense_units": 0, "optimizer": "sgd"},
            0.85,
            [0.4, 0.6, 0.8, 0.85],
        ),
        make_trial(
            3,
            "failed",
            {"learning_rate": 5e-3, "dense_units": 32, "optimizer": "adamw"},
            None,
            [0.25],
            error=ERROR,
        ),
        make_trial(
            4, "running", {"learning_rate": 2e-3, "dense_units": 64, "optimizer": "adamw"}, None, []
        ),
    ]


def make_study(
    trials: list[Trial] | None = None,
    *,
    best: int | None = 2,
    state: str = "running",
    name: str = "lr <sweep> & co",
    spec: dict[str, Any] | None = None,
) -> Study:
    return Study(
        id="study-abc",
        name=name,
        state=state,
        spec=make_spec() if spec is None else spec,
        created_at=WHEN,
        finished_at=WHEN if state != "running" else None,
        error="",
        trials=make_trials() if trials is None else trials,
        best_trial_number=best,
    )


def decode_png(data: bytes) -> Image.Image:
    assert data.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels(size: tuple[float, float]) -> tuple[int, int]:
    return (int(size[0] * DPI), int(size[1] * DPI))


def assert_drawn(image: Image.Image) -> None:
    assert len(image.convert("L").getcolors(256) or []) > 10, "the image is blank"


def test_study_report_model() -> None:
    report = build_study_report(make_study())
    assert (report.study_id, report.name, report.state) == (
        "study-abc",
        "lr <sweep> & co",
        "running",
    )
    assert (report.algorithm, report.objective, report.direction) == (
        "tpe",
        "val/accuracy",
        "maximize",
    )
    assert report.pruner_label == "asha (min_resource=1, reduction_factor=2)"
    assert (report.trial_kind, report.max_trials, report.max_parallel) == ("finetune", 10, 2)
    best = report.best
    assert best is not None
    assert (best.number, best.objective_value, best.job_id) == (2, 0.85, "job-2")
    assert best.params == {"learning_rate": 3e-4, "dense_units": 0, "optimizer": "sgd"}
    # Best first: completed by value, then pruned, then the others by number.
    assert [t.number for t in report.trials] == [2, 0, 1, 3, 4]
    assert [t.number for t in report.by_number] == [0, 1, 2, 3, 4]
    assert report.counts == {"running": 1, "completed": 2, "pruned": 1, "failed": 1, "cancelled": 0}
    pruned = report.trials[2]
    assert (pruned.pruned_rung, pruned.pruned_resource) == (1, 2)
    assert pruned.state_label == "pruned (rung 1, resource 2)"
    assert report.trials[0].state_label == "completed"
    assert report.trials[0].intermediate == [(1, 0.4), (2, 0.6), (3, 0.8), (4, 0.85)]
    params = {p.name: p for p in report.params}
    assert list(params) == ["learning_rate", "dense_units", "optimizer"]
    assert params["learning_rate"].type == "float" and params["learning_rate"].log
    assert (params["learning_rate"].low, params["learning_rate"].high) == (1e-4, 1e-1)
    assert params["dense_units"].type == "int" and not params["dense_units"].log
    assert params["optimizer"].categorical and params["optimizer"].choices == ["adamw", "sgd"]


def test_minimize_ranks_low_values_first() -> None:
    trials = [
        make_trial(0, "completed", {"learning_rate": 1e-3}, 0.9, [1.2, 0.9]),
        make_trial(1, "completed", {"learning_rate": 1e-2}, 0.4, [0.8, 0.4]),
        make_trial(2, "pruned", {"learning_rate": 1e-1}, 0.3, [0.3], rung=0, resource=1),
    ]
    spec = make_spec({"learning_rate": SPACE["learning_rate"]}, direction="minimize")
    report = build_study_report(make_study(trials, best=1, spec=spec))
    assert report.direction == "minimize" and not report.maximize
    # A pruned trial's value never outranks a completed one.
    assert [t.number for t in report.trials] == [1, 0, 2]
    document = json.loads(export_study_report(report, "json"))
    assert document["study"]["direction"] == "minimize"
    decode_png(export_study_report(report, "png"))


def test_json_validates_against_the_schema() -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    report = build_study_report(make_study())
    document = json.loads(export_study_report(report, "json"))
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
    assert document["type"] == "study_report" and document["schema_version"] == 1
    study = document["study"]
    assert (study["id"], study["name"], study["state"]) == (
        "study-abc",
        "lr <sweep> & co",
        "running",
    )
    assert study["pruner"] == {"kind": "asha", "min_resource": 1, "reduction_factor": 2}
    assert study["created_at"] == WHEN.isoformat() and study["finished_at"] is None
    assert study["search_space"]["optimizer"]["choices"] == ["adamw", "sgd"]
    assert document["trial_counts"]["completed"] == 2 and document["trial_counts"]["cancelled"] == 0
    assert document["best_trial"] == {
        "number": 2,
        "objective_value": 0.85,
        "params": {"learning_rate": 3e-4, "dense_units": 0, "optimizer": "sgd"},
        "job_id": "job-2",
    }
    trials = document["trials"]
    assert [t["number"] for t in trials] == [2, 0, 1, 3, 4]
    pruned = trials[2]
    assert pruned["state"] == "pruned"
    assert (pruned["pruned_rung"], pruned["pruned_resource"]) == (1, 2)
    assert pruned["objective_value"] == 0.2
    assert pruned["intermediate"] == [[1, 0.1], [2, 0.2]]
    assert trials[3]["error"] == ERROR and trials[3]["objective_value"] is None
    assert trials[4]["intermediate"] == [] and trials[4]["finished_at"] is None
    assert isinstance(trials[0]["params"]["dense_units"], int)


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("trials", 0, "intermediate", 0, 0), -1, "trials/0/intermediate/0/0"),
        (("trials", 1, "state"), "paused", "trials/1/state"),
        (("study", "direction"), "sideways", "study/direction"),
        (("best_trial", "objective_value"), None, "best_trial"),
        (("trial_counts", "pruned"), -2, "trial_counts/pruned"),
    ],
)
def test_schema_rejects_a_broken_document(path: tuple[Any, ...], value: Any, where: str) -> None:
    document = build_study_report(make_study()).to_json_dict()
    validate_document(document)
    target: Any = document
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(ReportSchemaError, match=re.escape(where)):
        validate_document(document)


def test_schema_rejects_a_study_field_in_a_job_report_kind() -> None:
    document = build_study_report(make_study()).to_json_dict()
    document["type"] = "job_report"
    with pytest.raises(ReportSchemaError):
        validate_document(document)
    document = build_study_report(make_study()).to_json_dict()
    document["unexpected"] = 1
    with pytest.raises(ReportSchemaError):
        validate_document(document)


def test_png_report() -> None:
    report = build_study_report(make_study())
    image = decode_png(export_study_report(report, "png"))
    assert param_grid(3) == (1, 3)
    assert image.size == pixels(study_summary_size(report))
    assert image.size[0] > image.size[1] > 500
    assert_drawn(image)
    for png, size in (
        (history_png(report), HISTORY_SIZE),
        (params_png(report), params_size(report)),
        (intermediate_png(report), INTERMEDIATE_SIZE),
    ):
        chart = decode_png(png)
        assert chart.size == pixels(size)
        assert_drawn(chart)


def test_html_is_self_contained_and_escaped() -> None:
    html = export_study_report(build_study_report(make_study()), "html").decode()
    images = re.findall(r'<img id="([\w-]+)" alt="[^"]*" src="data:image/png;base64,', html)
    assert images == ["chart-history", "chart-params", "chart-intermediate"]
    assert not re.search(r"https?://", html)
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
    assert "lr &lt;sweep&gt; &amp; co" in html and "<sweep>" not in html
    assert "matrec-ctl report job-2" in html
    assert "pruned (rung 1, resource 2)" in html
    # The trials table lists them best first, with a column per hyperparameter.
    table = html[html.index("<h2>Trials (best first)</h2>") :]
    assert [int(n) for n in re.findall(r'<tr><td class="num">(\d+)</td>', table)] == [2, 0, 1, 3, 4]
    for name in ("learning_rate", "dense_units", "optimizer"):
        assert f"<th>{name}</th>" in table


def test_no_completed_trial() -> None:
    trials = [
        make_trial(
            0, "pruned", {"learning_rate": 1e-3, "optimizer": "sgd"}, 0.1, [0.1], rung=0, resource=1
        ),
        make_trial(
            1, "failed", {"learning_rate": 1e-2, "optimizer": "adamw"}, None, [], error=ERROR
        ),
        make_trial(2, "running", {"learning_rate": 2e-2, "optimizer": "sgd"}, None, [0.2, 0.3]),
    ]
    report = build_study_report(make_study(trials, best=None))
    assert report.best is None
    document = json.loads(export_study_report(report, "json"))
    assert document["best_trial"] is None
    jsonschema.validate(document, load_schema(), cls=jsonschema.Draft202012Validator)
    html = export_study_report(report, "html").decode()
    assert "no best trial yet" in html and "<script" not in html
    assert_drawn(decode_png(export_study_report(report, "png")))
    # Only failed and running trials: nothing to plot, still an image.
    nothing = build_study_report(make_study(trials[1:], best=None))
    decode_png(export_study_report(nothing, "png"))
    decode_png(history_png(nothing))


def test_study_without_trials_and_with_one() -> None:
    empty = build_study_report(make_study([], best=None))
    assert empty.trials == [] and empty.best is None and sum(empty.counts.values()) == 0
    for fmt in ("json", "html", "png"):
        assert export_study_report(empty, fmt)
    assert "no trial yet" in export_study_report(empty, "html").decode()

    one = make_trial(
        0, "completed", {"learning_rate": 1e-3, "dense_units": 32, "optimizer": "sgd"}, 0.5, [0.5]
    )
    report = build_study_report(make_study([one], best=0, state="completed"))
    assert report.best is not None and report.best.number == 0
    document = json.loads(export_study_report(report, "json"))
    assert document["study"]["state"] == "completed" and len(document["trials"]) == 1
    assert document["trials"][0]["intermediate"] == [[1, 0.5]]
    assert_drawn(decode_png(export_study_report(report, "png")))
    assert 'id="chart-history"' in export_study_report(report, "html").decode()


def test_many_parameters_in_a_grid_of_panels() -> None:
    space = {f"p{i}": {"type": "float", "min": 0.0, "max": 1.0, "log": False} for i in range(7)}
    space["choice"] = {"type": "categorical", "choices": [1, 2, 3]}  # ints come back as floats
    trials = [
        make_trial(
            n,
            "completed",
            {**{f"p{i}": (n + i) / 20 for i in range(7)}, "choice": float(n % 3 + 1)},
            n / 10,
            [n / 20, n / 10],
        )
        for n in range(6)
    ]
    report = build_study_report(make_study(trials, best=5, spec=make_spec(space)))
    assert param_grid(len(report.params)) == (3, 3)
    image = decode_png(export_study_report(report, "png"))
    assert image.size == pixels(study_summary_size(report))
    assert image.size[1] > image.size[0]  # three rows of panels under the top row
    assert decode_png(params_png(report)).size == pixels(params_size(report))
    # A parameter the trials hold but the space does not name still gets its panel.
    extra = [make_trial(0, "completed", {"p0": 0.5, "other": "x"}, 0.5, [])]
    names = [
        p.name for p in build_study_report(make_study(extra, best=0, spec=make_spec(space))).params
    ]
    assert names[-1] == "other"


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown report format 'pdf'"):
        export_study_report(build_study_report(make_study()), "pdf")
