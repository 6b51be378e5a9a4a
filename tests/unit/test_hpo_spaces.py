"""Stepped and log spaces, exact exhaustion, and the multivariate TPE (`mtpe`): the search
algorithms asked directly, the way the coordinator's study driver asks them."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest
from matrec.common.studies import Param, parse_search_space
from matrec.coordinator.hpo.search import (
    GridSearch,
    HyperoptSearch,
    MultivariateTpeSearch,
    RandomSearch,
    SearchAlgorithm,
    SpaceExhausted,
    TrialHistory,
    params_key,
)

ALGORITHMS = ["grid", "random", "tpe", "anneal", "mtpe"]

SEED_SPACE = {
    "learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": True},
    "dropout_rate": {"type": "float", "min": 0.1, "max": 0.5},
    "dense_units": {"type": "int", "min": 64, "max": 512, "step": 64},
    "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
}


def algorithm(name: str, space: dict[str, Param], seed: int = 0, startup: int = 3) -> Any:
    if name == "grid":
        return GridSearch(space, grid_points=5, seed=seed)
    if name == "random":
        return RandomSearch(space, seed=seed)
    if name == "mtpe":
        return MultivariateTpeSearch(space, seed=seed, startup_trials=startup)
    return HyperoptSearch(space, seed=seed, algorithm=name, startup_trials=startup, gamma=1.0)  # type: ignore[arg-type]


def run_study(
    search: SearchAlgorithm, max_trials: int, loss: Any = None
) -> tuple[list[TrialHistory], bool]:
    """Ask and complete trials one at a time; (history, whether the space ran out)."""
    history: list[TrialHistory] = []
    for number in range(max_trials):
        try:
            params = search.suggest(number, history)
        except SpaceExhausted:
            return history, True
        value = loss(params) if loss else float(number % 7)
        history.append(TrialHistory(number, params, "completed", value))
    return history, False


AWKWARD = [
    # min not a multiple of step: rounding to multiples of step lost 4 of these 10 values.
    (
        {"x": {"type": "float", "min": 0.05, "max": 0.95, "step": 0.1}},
        [0.05 + 0.1 * k for k in range(10)],
    ),
    # max not on the grid, odd min: only 1, 5 and 9 were reached.
    ({"x": {"type": "int", "min": 1, "max": 10, "step": 2}}, [1, 3, 5, 7, 9]),
    # log scale with a step: 24 of the 49 values were reached.
    ({"x": {"type": "int", "min": 3, "max": 99, "step": 2, "log": True}}, list(range(3, 100, 2))),
]


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize(("raw_space", "expected"), AWKWARD, ids=["float05", "int1to10", "logint"])
def test_every_value_of_an_awkward_stepped_space_is_proposed(
    name: str, raw_space: dict[str, Any], expected: list[float]
) -> None:
    """Each algorithm reaches every value exactly once, and the study ends exhausted right
    after the last one (not before, not by a run of repeats)."""
    space = parse_search_space(raw_space)
    history, exhausted = run_study(algorithm(name, space), len(expected) + 5)
    values = sorted(h.params["x"] for h in history)
    assert values == pytest.approx(sorted(expected))
    assert exhausted


def test_a_large_log_stepped_space_is_run_to_the_last_value_or_to_max_trials() -> None:
    """334 values, most of the log-uniform mass on the small ones: the large values are rarely
    drawn, yet a 400-trial study tries all 334 and only then ends exhausted; a 300-trial study
    runs all 300 trials."""
    space = parse_search_space(
        {"x": {"type": "float", "min": 0.001, "max": 0.334, "step": 0.001, "log": True}}
    )
    for name in ("random", "grid"):
        history, exhausted = run_study(algorithm(name, space, seed=4), 400)
        assert (len(history), exhausted) == (334, True)
        assert len({params_key(h.params) for h in history}) == 334
        assert max(h.params["x"] for h in history) == pytest.approx(0.334)
        history, exhausted = run_study(algorithm(name, space, seed=4), 300)
        assert (len(history), exhausted) == (300, False)


@pytest.mark.parametrize("name", ["random", "anneal"])
def test_an_infinite_space_is_never_exhausted(name: str) -> None:
    """One continuous float makes the space infinite: however often the categorical repeats,
    the study runs to max_trials."""
    space = parse_search_space(
        {
            "c": {"type": "categorical", "choices": ["a", "b"]},
            "x": {"type": "float", "min": 0.0, "max": 1.0},
        }
    )
    history, exhausted = run_study(algorithm(name, space), 150, lambda p: p["x"])
    assert (len(history), exhausted) == (150, False)


def test_the_random_start_counts_trials_asked_not_trials_finished() -> None:
    """With 4 workers trial 5 is asked while trials 2-4 still run: only 2 trials have a
    result, yet with startup 3 it comes from the model (told the running ones), not from a
    random start stretched until 3 trials have finished: it differs from what the same
    algorithm proposes with a longer random start (the same random stream)."""
    space = parse_search_space(SEED_SPACE)
    done = [
        TrialHistory(n, RandomSearch(space, seed=9).suggest(n, []), "completed", float(n))
        for n in range(2)
    ]
    running = [
        TrialHistory(n, RandomSearch(space, seed=8).suggest(n, []), "running") for n in range(2, 5)
    ]
    history = done + running
    modelled = algorithm("mtpe", space, seed=1, startup=3).suggest(5, history)
    random_start = algorithm("mtpe", space, seed=1, startup=10).suggest(5, history)
    assert modelled != random_start


def history_of_every_kind(space: dict[str, Param]) -> list[TrialHistory]:
    sampler = RandomSearch(space, seed=11)
    history = [
        TrialHistory(n, sampler.suggest(n, []), "completed", quadratic_loss(sampler.suggest(n, [])))
        for n in range(8)
    ]
    history.append(TrialHistory(8, sampler.suggest(8, []), "pruned", 0.2, resource=3))
    history.append(TrialHistory(9, sampler.suggest(9, []), "failed"))
    history.append(TrialHistory(10, sampler.suggest(10, []), "cancelled"))
    history.append(TrialHistory(11, sampler.suggest(11, []), "running"))
    return history


def quadratic_loss(params: dict[str, Any]) -> float:
    return (math.log10(params["learning_rate"]) + 3) ** 2 + (params["dropout_rate"] - 0.3) ** 2


def test_mtpe_proposes_the_same_configuration_after_a_restart() -> None:
    """A restarted coordinator builds a new algorithm and rebuilds the history from the store:
    for a fixed seed and history the proposal is identical; another seed proposes another."""
    space = parse_search_space(SEED_SPACE)
    history = history_of_every_kind(space)
    before = algorithm("mtpe", space, seed=3).suggest(12, history)
    rebuilt = [TrialHistory(h.number, dict(h.params), h.state, h.loss, h.resource) for h in history]
    after = algorithm("mtpe", parse_search_space(SEED_SPACE), seed=3).suggest(12, rebuilt)
    assert before == after
    assert algorithm("mtpe", space, seed=4).suggest(12, history) != before
    assert params_key(before) not in {params_key(h.params) for h in history}


def test_mtpe_parallel_asks_never_repeat_and_stay_in_the_space() -> None:
    space = parse_search_space(SEED_SPACE)
    search = algorithm("mtpe", space, seed=5, startup=4)
    history: list[TrialHistory] = []
    for number in range(20):
        params = search.suggest(number, history)
        assert 1e-4 <= params["learning_rate"] <= 1e-2
        assert 0.1 <= params["dropout_rate"] <= 0.5
        assert params["dense_units"] in range(64, 513, 64)
        assert params["optimizer"] in ("adamw", "sgd")
        history.append(TrialHistory(number, params, "running"))
        if number >= 3:  # the oldest running trial finishes
            oldest = next(i for i, h in enumerate(history) if h.state == "running")
            done = history[oldest]
            history[oldest] = TrialHistory(
                done.number, done.params, "completed", quadratic_loss(done.params)
            )
    keys = [params_key(h.params) for h in history]
    assert len(set(keys)) == len(keys)


def test_mtpe_concentrates_where_the_objective_is_good() -> None:
    """After its random start the multivariate TPE samples near the optimum: the median loss of
    its later trials is far below random search's."""
    space = parse_search_space(
        {
            "learning_rate": {"type": "float", "min": 1e-5, "max": 1e-1, "log": True},
            "dropout_rate": {"type": "float", "min": 0.0, "max": 0.9},
        }
    )
    wins = 0
    for seed in range(3):
        later = {}
        for name in ("mtpe", "random"):
            history, _ = run_study(algorithm(name, space, seed, startup=5), 25, quadratic_loss)
            later[name] = statistics.median(h.loss or 0.0 for h in history[10:])
        wins += later["mtpe"] < 0.75 * later["random"]
    assert wins >= 2


@pytest.mark.parametrize("name", ["mtpe", "tpe"])
def test_a_pruned_trials_early_value_is_not_taken_for_a_final_loss(name: str) -> None:
    """Trials near x = 0.9 were pruned after one epoch at a spectacular early value; the
    completed ones say the optimum is near 0.2. The models must follow the completed trials:
    taking the early values for final losses would send them to 0.9."""
    space = parse_search_space({"x": {"type": "float", "min": 0.0, "max": 1.0}})
    history = [
        TrialHistory(n, {"x": 0.05 + 0.1 * n}, "completed", (0.05 + 0.1 * n - 0.2) ** 2)
        for n in range(10)
    ]
    history += [
        TrialHistory(10 + i, {"x": x}, "pruned", -100.0, resource=1)
        for i, x in enumerate((0.86, 0.88, 0.9, 0.92))
    ]
    proposals = [
        algorithm(name, space, seed=seed, startup=5).suggest(14, history)["x"] for seed in range(9)
    ]
    assert statistics.median(proposals) < 0.5, proposals
