"""Search spaces, search algorithms and pruners, without a coordinator: the same classes the
coordinator's study driver asks and tells."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest
from matrec.common.specs import SpecError
from matrec.common.studies import grid_size, parse_search_space, parse_study_spec
from matrec.coordinator.hpo.pruning import AshaPruner, MedianPruner
from matrec.coordinator.hpo.search import (
    GridSearch,
    HyperoptSearch,
    RandomSearch,
    SpaceExhausted,
    TrialHistory,
    params_key,
)

SEED_SPACE = {
    "learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": True},
    "dropout_rate": {"type": "float", "min": 0.1, "max": 0.5},
    "dense_units": {"type": "int", "min": 64, "max": 512, "step": 64},
    "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
}


def finetune_study(**overrides: Any) -> dict[str, Any]:
    return {
        "trial": {"kind": "finetune", "config": {"dataset_path": "/data"}},
        "search_space": SEED_SPACE,
        **overrides,
    }


def in_space(params: dict[str, Any]) -> None:
    assert 1e-4 <= params["learning_rate"] <= 1e-2
    assert 0.1 <= params["dropout_rate"] <= 0.5
    assert params["dense_units"] in range(64, 513, 64)
    assert params["optimizer"] in ("adamw", "sgd")


# ---- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("space", "field", "words"),
    [
        ({}, "search_space", "empty"),
        (None, "search_space", "empty"),
        ({"lr": {"type": "float", "min": 1.0, "max": 0.5}}, "search_space.lr", "greater than"),
        ({"lr": {"type": "float", "min": 0.0, "max": 1, "log": True}}, "search_space.lr", "> 0"),
        ({"n": {"type": "int", "min": -1, "max": 4, "log": True}}, "search_space.n", "> 0"),
        ({"lr": {"type": "gaussian"}}, "search_space.lr.type", "unknown type 'gaussian'"),
        ({"lr": {"min": 1, "max": 2}}, "search_space.lr.type", "unknown type None"),
        ({"lr": {"type": "float", "max": 2}}, "search_space.lr.min", "required"),
        ({"c": {"type": "categorical", "choices": []}}, "search_space.c.choices", "at least 1"),
        ({"c": {"type": "categorical", "choices": [1, 1]}}, "search_space.c", "distinct"),
        ({"n": {"type": "int", "min": 1, "max": 3, "stp": 2}}, "search_space.n.stp", "unknown"),
        ({"lr": 0.1}, "search_space.lr", "must be an object"),
    ],
)
def test_bad_spaces_name_the_parameter(space: Any, field: str, words: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_search_space(space)
    assert raised.value.field == field
    assert words in raised.value.message


def test_space_must_fit_the_trial_kind() -> None:
    with pytest.raises(SpecError, match="not a setting of finetune jobs") as raised:
        parse_study_spec(
            finetune_study(search_space={"dropout": {"type": "float", "min": 0, "max": 1}})
        )
    assert raised.value.field == "search_space.dropout"
    # A bound the job itself would refuse (learning_rate <= 10) is caught at the study.
    too_high = {"learning_rate": {"type": "float", "min": 1e-3, "max": 20.0}}
    with pytest.raises(SpecError, match=r"value 20\.0 is not a valid learning_rate") as raised:
        parse_study_spec(finetune_study(search_space=too_high))
    assert raised.value.field == "search_space.learning_rate"
    fixed_twice = finetune_study(
        trial={"config": {"dataset_path": "/data", "dense_units": 64}},
        search_space={"dense_units": {"type": "int", "min": 64, "max": 128}},
    )
    with pytest.raises(SpecError, match=r"also fixed in trial\.config"):
        parse_study_spec(fixed_twice)


def test_study_fields_are_checked() -> None:
    with pytest.raises(SpecError) as raised:
        parse_study_spec(finetune_study(algorithm="bohb"))
    assert raised.value.field == "algorithm"
    with pytest.raises(SpecError) as raised:
        parse_study_spec(finetune_study(objective="val/auc"))
    assert raised.value.field == "objective" and "val/accuracy" in raised.value.message
    with pytest.raises(SpecError) as raised:
        parse_study_spec(finetune_study(trial={"config": {"dataset_path": "/d", "epochs": 0}}))
    assert raised.value.field == "trial.config.epochs"
    with pytest.raises(SpecError) as raised:
        parse_study_spec(finetune_study(pruner={"kind": "asha", "reduction_factor": 1}))
    assert raised.value.field == "pruner.reduction_factor"
    huge = {f"p{i}": {"type": "int", "min": 1, "max": 100} for i in range(3)}
    with pytest.raises(SpecError, match="the grid has 1,000,000 points"):
        parse_study_spec(
            {"trial": {"kind": "finetune", "config": {"dataset_path": "/d"}}, "search_space": {}}
            | {"search_space": {"epochs": huge["p0"], "batch_size": huge["p1"], "seed": huge["p2"]}}
            | {"algorithm": "grid"}
        )


def test_objective_and_direction_defaults() -> None:
    spec = parse_study_spec(finetune_study())
    assert (spec.objective, spec.direction) == ("val/accuracy", "maximize")
    spec = parse_study_spec(finetune_study(objective="val/loss"))
    assert spec.direction == "minimize"
    spec = parse_study_spec(finetune_study(objective="val/loss", direction="maximize"))
    assert spec.direction == "maximize"


# ---- algorithms ------------------------------------------------------------------------------


def test_grid_enumerates_every_point_once_in_a_seeded_order() -> None:
    space = parse_search_space(
        {
            "a": {"type": "float", "min": 0.0, "max": 1.0},
            "b": {"type": "int", "min": 1, "max": 5, "step": 2},
            "c": {"type": "categorical", "choices": ["x", "y"]},
            "d": {"type": "float", "min": 1e-3, "max": 1e-1, "log": True},
        }
    )
    assert grid_size(space, 3) == 3 * 3 * 2 * 3
    grid = GridSearch(space, grid_points=3, seed=1)
    points = [grid.suggest(n, []) for n in range(grid.size)]
    assert len({params_key(p) for p in points}) == 54
    assert {p["a"] for p in points} == {0.0, 0.5, 1.0}
    assert {p["b"] for p in points} == {1, 3, 5}
    assert sorted({p["d"] for p in points}) == pytest.approx([1e-3, 1e-2, 1e-1])
    with pytest.raises(SpaceExhausted):
        grid.suggest(54, [])
    same = GridSearch(space, grid_points=3, seed=1)
    other = GridSearch(space, grid_points=3, seed=2)
    assert [same.suggest(n, []) for n in range(5)] == points[:5]
    assert [other.suggest(n, []) for n in range(5)] != points[:5]


def test_random_is_reproducible_in_range_and_skips_repeats() -> None:
    space = parse_search_space(SEED_SPACE)
    first = [RandomSearch(space, seed=7).suggest(n, []) for n in range(20)]
    again = [RandomSearch(space, seed=7).suggest(n, []) for n in range(20)]
    assert first == again
    for params in first:
        in_space(params)
    tiny = parse_search_space({"c": {"type": "categorical", "choices": ["a", "b"]}})
    search = RandomSearch(tiny, seed=0)
    history: list[TrialHistory] = []
    for n in range(2):
        history.append(TrialHistory(n, search.suggest(n, history), "completed", 1.0))
    assert {h.params["c"] for h in history} == {"a", "b"}
    with pytest.raises(SpaceExhausted):
        search.suggest(2, history)


def quadratic_loss(params: dict[str, Any]) -> float:
    return (math.log10(params["learning_rate"]) + 3) ** 2 + (params["dropout_rate"] - 0.3) ** 2


@pytest.mark.parametrize("algorithm", ["tpe", "anneal"])
def test_hyperopt_parallel_asks_never_repeat_and_stay_in_the_space(algorithm: str) -> None:
    """Trials are asked while others are still running (max_parallel 4): each ask sees the
    running ones, and no configuration comes twice."""
    space = parse_search_space(SEED_SPACE)
    search = HyperoptSearch(space, seed=5, algorithm=algorithm, startup_trials=4, gamma=1.0)  # type: ignore[arg-type]
    history: list[TrialHistory] = []
    for number in range(24):
        params = search.suggest(number, history)
        in_space(params)
        history.append(TrialHistory(number, params, "running"))
        if number >= 3:  # the oldest running trial finishes
            oldest = next(i for i, h in enumerate(history) if h.state == "running")
            done = history[oldest]
            history[oldest] = TrialHistory(
                done.number, done.params, "completed", quadratic_loss(done.params)
            )
    keys = [params_key(h.params) for h in history]
    assert len(set(keys)) == len(keys)


def test_tpe_is_a_function_of_the_history() -> None:
    """A restarted coordinator rebuilds the history from the store and gets the same answer."""
    space = parse_search_space(SEED_SPACE)
    history = [
        TrialHistory(n, p, "completed", quadratic_loss(p))
        for n, p in enumerate(RandomSearch(space, seed=1).suggest(n, []) for n in range(8))
    ]
    history.append(TrialHistory(8, RandomSearch(space, seed=2).suggest(0, []), "running"))
    answers = [
        HyperoptSearch(space, seed=3, algorithm="tpe", startup_trials=4, gamma=1.0).suggest(
            9, history
        )
        for _ in range(2)
    ]
    assert answers[0] == answers[1]


def test_tpe_concentrates_where_the_objective_is_good() -> None:
    """After its random start TPE samples near the optimum: the median loss of its later trials
    is far below random search's (the best value alone is too noisy at 30 trials)."""
    space = parse_search_space(
        {
            "learning_rate": {"type": "float", "min": 1e-5, "max": 1e-1, "log": True},
            "dropout_rate": {"type": "float", "min": 0.0, "max": 0.9},
        }
    )
    wins = 0
    for seed in range(4):
        later: dict[str, float] = {}
        for name, search in (
            ("tpe", HyperoptSearch(space, seed=seed, algorithm="tpe", startup_trials=5, gamma=1.0)),
            ("random", RandomSearch(space, seed=seed)),
        ):
            history: list[TrialHistory] = []
            for n in range(30):
                params = search.suggest(n, history)
                history.append(TrialHistory(n, params, "completed", quadratic_loss(params)))
            later[name] = statistics.median(h.loss or 0.0 for h in history[10:])
        wins += later["tpe"] < 0.75 * later["random"]
    assert wins >= 3


def test_failed_trials_count_for_the_search_as_bad_results() -> None:
    """Trials that failed in one region (x < 0.25) push TPE's suggestions out of it, compared
    with a control history without them, where the best completed trial borders that region and
    TPE searches there. Failures fed to TPE as good results, or dropped, fail this test."""
    space = parse_search_space({"x": {"type": "float", "min": 0.0, "max": 1.0}})
    completed = [
        TrialHistory(n, {"x": x}, "completed", (x - 0.3) ** 2)
        for n, x in enumerate([0.3, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95])
    ]
    failed = [
        TrialHistory(len(completed) + n, {"x": x}, "failed", None)
        for n, x in enumerate([0.02, 0.06, 0.1, 0.14, 0.18, 0.22])
    ]

    def in_failed_region(history: list[TrialHistory]) -> int:
        hits = 0
        for seed in range(8):
            search = HyperoptSearch(space, seed=seed, algorithm="tpe", startup_trials=4, gamma=1.0)
            for ask in range(4):
                hits += search.suggest(len(history) + ask, history)["x"] < 0.25
        return hits

    control, with_failures = in_failed_region(completed), in_failed_region(completed + failed)
    assert control >= 20, f"control: only {control} of 32 suggestions below 0.25"
    assert with_failures <= 6, f"{with_failures} of 32 suggestions where trials failed"


# ---- pruners ---------------------------------------------------------------------------------


def test_asha_promotes_the_best_fraction_once_per_rung() -> None:
    asha = AshaPruner(min_resource=1, reduction_factor=2)  # rungs at 1, 2, 4, 8
    curves = {0: [0.5, 0.4, 0.3, 0.2], 1: [0.6]}
    # Trial 1 reached rung 0 (resource 1): 2 values there, the best half goes on; it is worse.
    verdict = asha.judge(1, curves, judged=0)
    assert verdict.prune and (verdict.rung, verdict.resource) == (0, 1)
    assert "rung 0 (resource 1)" in verdict.reason
    # Trial 0 was first at every rung it reached, so it passed rungs 0, 1 and 2.
    verdict = asha.judge(0, curves, judged=0)
    assert not verdict.prune and verdict.judged == 3
    # Decisions are not revisited: a rung already passed stays passed.
    curves[2] = [0.1, 0.05, 0.01, 0.001]
    assert not asha.judge(0, curves, judged=3).prune
    # ...but the next rung is judged against everything recorded there by then.
    curves[0] += [0.15, 0.12, 0.11, 0.1]
    curves[2] += [0.001] * 4
    verdict = asha.judge(0, curves, judged=3)
    assert verdict.prune and (verdict.rung, verdict.resource) == (3, 8)


def test_asha_keeps_a_trial_in_the_top_fraction() -> None:
    asha = AshaPruner(min_resource=2, reduction_factor=3)  # rungs at 2, 6, 18
    curves = {n: [1.0, v] for n, v in enumerate([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])}
    # 6 values at resource 2: the best 6 // 3 = 2 go on (0.4 and 0.5).
    assert not asha.judge(5, curves, 0).prune
    assert not asha.judge(4, curves, 0).prune
    assert asha.judge(3, curves, 0).prune
    assert asha.judge(1, {1: [1.0]}, 0).judged == 0  # not at a rung yet


def test_median_stops_below_median_after_warmup_and_enough_peers() -> None:
    median = MedianPruner(min_resource=2, min_trials=2)
    curves = {0: [0.5, 0.4, 0.3], 1: [0.6, 0.5, 0.4], 2: [0.9, 0.9, 0.9]}
    verdict = median.judge(2, curves, judged=0)
    assert verdict.prune and verdict.resource == 2
    assert not median.judge(0, curves, judged=0).prune
    lonely = {0: [0.5, 0.4], 1: [0.9, 0.9]}
    assert median.judge(1, lonely, judged=0) == median.judge(1, lonely, judged=0)
    assert not median.judge(1, lonely, judged=0).prune  # one peer is not enough


def test_a_trial_is_never_judged_at_its_final_resource() -> None:
    """Stopping a trial after its last epoch saves nothing and would lose its result."""
    asha = AshaPruner(min_resource=1, reduction_factor=3)  # rungs at 1, 3, 9
    curves = {0: [0.5, 0.4, 0.1], 1: [0.6, 0.5, 0.2]}
    assert asha.judge(1, curves, judged=1).prune  # rung 1 at resource 3, worse than trial 0
    verdict = asha.judge(1, curves, judged=1, final_resource=3)
    assert not verdict.prune and verdict.judged == 1
    median = MedianPruner(min_resource=1, min_trials=1)
    assert median.judge(1, curves, judged=2).prune
    assert not median.judge(1, curves, judged=2, final_resource=3).prune


def test_final_resource_of_a_trial() -> None:
    from matrec.common.studies import final_resource

    assert final_resource("finetune", {"epochs": 9}) == 9
    assert final_resource("finetune", {}) == 5  # the default epochs
    assert final_resource("diagnostic", {"steps": 4}) == 4
    assert final_resource("unknown", {}) is None
