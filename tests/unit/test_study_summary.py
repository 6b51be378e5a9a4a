"""The study page's aggregation (coordinator/study_summary.py) on trials made up here: every
series stays within its bound at 10,000 trials and keeps what matters (each bucket's extremes,
the best-so-far steps), the importance estimate singles out the one parameter the objective
depends on, and the trial table filters, sorts and pages."""

from __future__ import annotations

import math
import random

from matrec.coordinator.study_summary import (
    SummaryTrial,
    TrialTableQuery,
    best_so_far,
    downsample_history,
    importance,
    trial_table,
)

SPACE = {
    "lr": {"type": "float", "min": 1e-4, "max": 1e-1, "log": True},
    "batch": {"type": "categorical", "choices": [8, 16, 32]},
    "noise": {"type": "float", "min": 0.0, "max": 1.0},
}


def make_trials(count: int, seed: int = 0) -> list[SummaryTrial]:
    rng = random.Random(seed)
    trials = []
    for number in range(count):
        lr = 10 ** rng.uniform(-4, -1)
        params = {"lr": lr, "batch": rng.choice([8, 16, 32]), "noise": rng.random()}
        value = 1.0 - abs(math.log10(lr) + 2.0) / 2 + rng.gauss(0, 0.01)
        state = "pruned" if number % 3 == 0 else "completed"
        trials.append(
            SummaryTrial(number, state, params, value, 1 if state == "pruned" else None,
                         2 if state == "pruned" else None, f"job-{number}", "")
        )  # fmt: skip
    return trials


def test_history_is_bounded_and_keeps_each_buckets_extremes() -> None:
    trials = make_trials(10_000)
    history = downsample_history(trials, 1000)
    assert len(history["number"]) <= 1000
    assert history["number"] == sorted(history["number"])
    values = [t.objective_value for t in trials if t.objective_value is not None]
    # The overall best and worst trials survive any bucketing.
    assert max(values) in history["value"] and min(values) in history["value"]
    assert set(history["state"]) == {"completed", "pruned"}
    small = make_trials(50)
    assert downsample_history(small, 1000)["number"] == list(range(50))


def test_best_so_far_has_a_point_only_where_the_best_improved() -> None:
    states = ["completed", "completed", "pruned", "completed", "completed", "completed"]
    values = [0.5, 0.4, 0.9, 0.7, 0.6, 0.8]
    trials = [
        SummaryTrial(n, s, {}, v, None, None, None, "")
        for n, (s, v) in enumerate(zip(states, values, strict=True))
    ]
    # Pruned trials never count; the line runs on to the last completed trial.
    assert best_so_far(trials, maximize=True) == {
        "number": [0, 3, 5],
        "value": [0.5, 0.7, 0.8],
    }
    assert best_so_far(trials, maximize=False) == {
        "number": [0, 1, 5],
        "value": [0.5, 0.4, 0.4],
    }


def test_importance_finds_the_parameter_that_matters() -> None:
    trials = make_trials(2000)
    scores = {name: importance(trials, name, SPACE[name]) for name in SPACE}
    assert scores["lr"] > 0.8
    assert scores["batch"] < 0.05 and scores["noise"] < 0.05


def test_trial_table_filters_sorts_and_pages() -> None:
    trials = make_trials(300)
    query = TrialTableQuery(
        states=("completed",), param="noise", param_min=0.25, param_max=0.5,
        sort="value", descending=True, offset=5, page_size=10,
    )  # fmt: skip
    table = trial_table(trials, query)
    wanted = [
        t for t in trials if t.state == "completed" and 0.25 <= float(t.params["noise"]) <= 0.5
    ]
    wanted.sort(key=lambda t: t.objective_value or 0.0, reverse=True)
    assert table["total"] == len(wanted)
    assert [row["number"] for row in table["rows"]] == [t.number for t in wanted[5:15]]
    by_number = trial_table(trials, TrialTableQuery(sort="number", descending=True, page_size=3))
    assert [row["number"] for row in by_number["rows"]] == [299, 298, 297]
