"""Search algorithms, driven ask/tell: grid, random, and hyperopt's TPE and annealing.

An algorithm is asked for trial `number` given every trial so far (finished or not) and
answers with parameter values. It keeps no state of its own: the coordinator rebuilds what it
needs from the stored trials on every ask, so a restarted coordinator continues a study where
it stood. Losses are minimised; the caller negates an objective it maximises.

hyperopt is imported on first use only (it takes seconds): the coordinator starts without it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from matrec.common.studies import (
    CategoricalParam,
    FloatParam,
    IntParam,
    Param,
    StudySpecModel,
    float_grid,
)

#: How often an algorithm may retry before it concludes the space holds nothing new.
MAX_DUPLICATE_RETRIES = 64

HistoryState = Literal["running", "completed", "pruned", "failed", "cancelled"]


@dataclass(frozen=True)
class TrialHistory:
    """What a search algorithm knows of one trial."""

    number: int
    params: dict[str, Any]
    state: HistoryState
    # Minimised; set for completed trials and for pruned ones (their last reported value).
    loss: float | None = None


class SpaceExhausted(Exception):
    """The algorithm finds no configuration that has not been tried already."""


class SearchAlgorithm(Protocol):
    def suggest(self, number: int, history: Sequence[TrialHistory]) -> dict[str, Any]: ...


def params_key(params: dict[str, Any]) -> str:
    """A canonical form of a configuration, for spotting repeats (floats to 12 digits)."""

    def canonical(value: Any) -> Any:
        return float(f"{value:.12g}") if isinstance(value, float) else value

    return json.dumps({k: canonical(v) for k, v in sorted(params.items())}, sort_keys=True)


def snap(param: Param, value: float) -> Any:
    """Clamp a raw sample into the parameter's range and onto its steps."""
    if isinstance(param, CategoricalParam):
        return param.choices[min(max(round(value), 0), len(param.choices) - 1)]
    value = min(max(value, param.min), param.max)
    if isinstance(param, IntParam):
        k = round((value - param.min) / param.step)
        k = min(max(k, 0), len(param.values) - 1)
        return int(param.min + k * param.step)
    if param.step is not None:
        k = round((value - param.min) / param.step)
        return float(min(param.min + k * param.step, param.max))
    return float(value)


def sample_random(space: dict[str, Param], rng: np.random.Generator) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, param in space.items():
        if isinstance(param, CategoricalParam):
            params[name] = param.choices[int(rng.integers(len(param.choices)))]
        elif isinstance(param, IntParam) and not param.log:
            params[name] = int(param.values[int(rng.integers(len(param.values)))])
        elif param.log:
            params[name] = snap(
                param, math.exp(rng.uniform(math.log(param.min), math.log(param.max)))
            )
        else:
            params[name] = snap(param, rng.uniform(param.min, param.max))
    return params


def trial_seed(seed: int, number: int, retry: int = 0) -> list[int]:
    """An independent random stream per (study seed, trial number, retry)."""
    return [seed, number, retry]


class GridSearch:
    """Every combination, in a seeded shuffled order (so a study cut short by max_trials still
    spreads over the whole grid). Trial n takes the n-th point."""

    def __init__(self, space: dict[str, Param], grid_points: int, seed: int) -> None:
        axes: list[list[Any]] = []
        for param in space.values():
            if isinstance(param, FloatParam):
                axes.append(float_grid(param, grid_points))
            elif isinstance(param, IntParam):
                axes.append(list(param.values))
            else:
                axes.append(list(param.choices))
        self.names = list(space)
        self.axes = axes
        self.size = math.prod(len(a) for a in axes)
        self.order = np.random.default_rng(seed).permutation(self.size)

    def point(self, index: int) -> dict[str, Any]:
        params: dict[str, Any] = {}
        rest = int(index)
        for name, axis in zip(reversed(self.names), reversed(self.axes), strict=True):
            rest, position = divmod(rest, len(axis))
            params[name] = axis[position]
        return {name: params[name] for name in self.names}

    def suggest(self, number: int, history: Sequence[TrialHistory]) -> dict[str, Any]:
        if number >= self.size:
            raise SpaceExhausted(f"all {self.size} grid points have been tried")
        return self.point(int(self.order[number]))


class RandomSearch:
    def __init__(self, space: dict[str, Param], seed: int) -> None:
        self.space = space
        self.seed = seed

    def suggest(self, number: int, history: Sequence[TrialHistory]) -> dict[str, Any]:
        seen = {params_key(t.params) for t in history}
        for retry in range(MAX_DUPLICATE_RETRIES):
            rng = np.random.default_rng(trial_seed(self.seed, number, retry))
            params = sample_random(self.space, rng)
            if params_key(params) not in seen:
                return params
        raise SpaceExhausted(f"{MAX_DUPLICATE_RETRIES} random samples were all repeats")


class HyperoptSearch:
    """hyperopt's TPE or simulated annealing, asked one trial at a time.

    Every trial goes into hyperopt's Trials as a document: finished ones as DONE with their
    loss, failed and cancelled ones as DONE with status 'fail' (an ERROR document would vanish
    from TPE), running ones as RUNNING. TPE counts a document without a loss as an infinitely
    bad one, so parallel asks are pushed away from the configurations still running (a constant
    liar) instead of repeating them. Until `startup_trials` trials have a loss the suggestion is
    random. `gamma` sets how many of the best trials TPE models as good (StudySpecModel's
    tpe_gamma). Integers are searched as step indices and categorical values as choice indices.
    """

    def __init__(
        self,
        space: dict[str, Param],
        seed: int,
        algorithm: Literal["tpe", "anneal"],
        startup_trials: int,
        gamma: float,
    ) -> None:
        from hyperopt import hp  # slow to import: only when a study uses hyperopt

        self.space = space
        self.seed = seed
        self.algorithm = algorithm
        self.startup_trials = startup_trials
        self.gamma = gamma
        self.hyperopt_space: dict[str, Any] = {}
        for name, param in space.items():
            if isinstance(param, CategoricalParam):
                node = hp.choice(name, list(range(len(param.choices))))
            elif isinstance(param, IntParam):
                if param.log:
                    node = hp.qloguniform(
                        name, math.log(param.min), math.log(param.max + 0.5), param.step
                    )
                else:
                    node = hp.quniform(name, -0.5, len(param.values) - 0.5, 1)
            elif param.log:
                low, high = math.log(param.min), math.log(param.max)
                node = (
                    hp.qloguniform(name, low, high, param.step)
                    if param.step
                    else hp.loguniform(name, low, high)
                )
            else:
                node = (
                    hp.quniform(name, param.min, param.max, param.step)
                    if param.step
                    else hp.uniform(name, param.min, param.max)
                )
            self.hyperopt_space[name] = node

    def encode(self, params: dict[str, Any]) -> dict[str, float]:
        """Parameter values in hyperopt's own terms (indices for choices and linear ints)."""
        encoded: dict[str, float] = {}
        for name, param in self.space.items():
            value = params[name]
            if isinstance(param, CategoricalParam):
                encoded[name] = float([repr(c) for c in param.choices].index(repr(value)))
            elif isinstance(param, IntParam) and not param.log:
                encoded[name] = float((int(value) - param.min) // param.step)
            else:
                encoded[name] = float(value)
        return encoded

    def decode(self, vals: dict[str, float]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, param in self.space.items():
            raw = float(vals[name])
            if isinstance(param, IntParam) and not param.log:
                params[name] = snap(param, param.min + round(raw) * param.step)
            else:
                params[name] = snap(param, raw)
        return params

    def _trials(self, history: Sequence[TrialHistory]) -> Any:
        from hyperopt import STATUS_FAIL, STATUS_OK, Trials
        from hyperopt.base import JOB_STATE_DONE, JOB_STATE_RUNNING

        trials = Trials()
        docs = []
        for trial in history:
            vals = self.encode(trial.params)
            misc = {
                "tid": trial.number,
                "cmd": ("domain_attachment", "FMinIter_Domain"),
                "workdir": None,
                "idxs": {name: [trial.number] for name in vals},
                "vals": {name: [value] for name, value in vals.items()},
            }
            if trial.state == "running":
                result: dict[str, Any] = {"status": "new"}
            elif trial.loss is not None and math.isfinite(trial.loss):
                result = {"status": STATUS_OK, "loss": trial.loss}
            else:
                result = {"status": STATUS_FAIL}
            (doc,) = trials.new_trial_docs([trial.number], [None], [result], [misc])
            doc["state"] = JOB_STATE_RUNNING if trial.state == "running" else JOB_STATE_DONE
            docs.append(doc)
        trials.insert_trial_docs(docs)
        trials.refresh()
        return trials

    def suggest(self, number: int, history: Sequence[TrialHistory]) -> dict[str, Any]:
        from hyperopt import anneal, rand, tpe
        from hyperopt.base import Domain

        domain = Domain(lambda _: 0.0, self.hyperopt_space)
        trials = self._trials(history)
        with_loss = sum(1 for t in history if t.loss is not None and math.isfinite(t.loss))
        seen = {params_key(t.params) for t in history}
        for retry in range(MAX_DUPLICATE_RETRIES):
            seed = int(np.random.default_rng(trial_seed(self.seed, number, retry)).integers(2**31))
            if with_loss < self.startup_trials or retry >= MAX_DUPLICATE_RETRIES // 2:
                docs = rand.suggest([number], domain, trials, seed)
            elif self.algorithm == "tpe":
                docs = tpe.suggest(
                    [number], domain, trials, seed, n_startup_jobs=0, gamma=self.gamma
                )
            else:
                docs = anneal.suggest([number], domain, trials, seed)
            vals = {name: values[0] for name, values in docs[0]["misc"]["vals"].items() if values}
            params = self.decode(vals)
            if params_key(params) not in seen:
                return params
        raise SpaceExhausted(f"{MAX_DUPLICATE_RETRIES} suggestions were all repeats")


def build_algorithm(spec: StudySpecModel) -> SearchAlgorithm:
    if spec.algorithm == "grid":
        return GridSearch(spec.search_space, spec.grid_points, spec.seed)
    if spec.algorithm == "random":
        return RandomSearch(spec.search_space, spec.seed)
    return HyperoptSearch(
        spec.search_space, spec.seed, spec.algorithm, spec.startup_trials, spec.tpe_gamma
    )
