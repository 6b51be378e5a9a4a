"""Search algorithms, driven ask/tell: grid, random, Optuna's multivariate TPE (`mtpe`), and
hyperopt's TPE and annealing.

An algorithm is asked for trial `number` given every trial so far (finished or not) and
answers with parameter values. It keeps no state of its own: the coordinator rebuilds what it
needs from the stored trials on every ask, so a restarted coordinator continues a study where
it stood. Losses are minimised; the caller negates an objective it maximises.

Every numeric parameter with finitely many values (ints, stepped floats) is searched through
its list of values (`param_values`), so every value can be proposed whatever `min` and `step`
are. A finite space ends ("exhausted") exactly when every configuration has been tried; an
infinite one never does.

hyperopt and Optuna are imported on first use only (they take seconds): the coordinator
starts without them.
"""

from __future__ import annotations

import json
import math
import warnings
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
    float_step_count,
)

#: Candidates mtpe draws from the good-trials model per ask, keeping the one with the best
#: ratio of good to bad density (Optuna's default is 24). 64 gave a lower median final regret on
#: 4 of the 5 objectives of benchmarks/hpo_compare.py (20 seeds; benchmarks/README.md).
MTPE_EI_CANDIDATES = 64

#: How often a model-based algorithm re-asks its model after a repeat before it picks an untried
#: configuration at random instead.
MODEL_RETRIES = 3

HistoryState = Literal["running", "completed", "pruned", "failed", "cancelled"]


@dataclass(frozen=True)
class TrialHistory:
    """What a search algorithm knows of one trial."""

    number: int
    params: dict[str, Any]
    state: HistoryState
    # Minimised. Completed trials: the final value. Pruned ones: the value at the resource they
    # were stopped at (`resource`), an intermediate value, never used as a final loss.
    loss: float | None = None
    resource: int | None = None

    @property
    def final_loss(self) -> float | None:
        if self.state == "completed" and self.loss is not None and math.isfinite(self.loss):
            return self.loss
        return None


class SpaceExhausted(Exception):
    """Every configuration of a finite space has been tried."""


class SearchAlgorithm(Protocol):
    def suggest(self, number: int, history: Sequence[TrialHistory]) -> dict[str, Any]: ...


def params_key(params: dict[str, Any]) -> str:
    """A canonical form of a configuration, for spotting repeats (floats to 12 digits)."""

    def canonical(value: Any) -> Any:
        return float(f"{value:.12g}") if isinstance(value, float) else value

    return json.dumps({k: canonical(v) for k, v in sorted(params.items())}, sort_keys=True)


def value_count(param: FloatParam | IntParam) -> int | None:
    """How many values a numeric parameter takes; None for a float without a step."""
    if isinstance(param, IntParam):
        return len(param.values)
    if param.min == param.max:
        return 1
    return None if param.step is None else float_step_count(param)


def value_at(param: FloatParam | IntParam, k: int) -> Any:
    """The k-th value of a numeric parameter with a count: min + k * step."""
    if isinstance(param, IntParam):
        return param.min + k * param.step
    return param.min + k * (param.step or 0.0)


def nearest_index(param: FloatParam | IntParam, value: float) -> int:
    """The index of the value closest to `value` (in log distance for a log parameter)."""
    count = value_count(param)
    assert count is not None
    step = float(param.step or 1.0)
    below = min(max(math.floor((value - param.min) / step), 0), count - 1)
    above = min(below + 1, count - 1)
    low, high = float(value_at(param, below)), float(value_at(param, above))
    if param.log and value > 0:
        closer_below = math.log(value / low) <= math.log(high / value)
    else:
        closer_below = value - low <= high - value
    return below if closer_below else above


def indexed_count(param: FloatParam | IntParam) -> int | None:
    """The value count of a parameter the models search by index (linear ones with a count,
    or a single value); None for the ones they search by value (continuous, or log)."""
    count = value_count(param)
    if count is None or (param.log and count > 1):
        return None
    return count


def param_values(param: Param) -> list[Any] | None:
    """Every value a parameter can take, in order; None for a float without a step."""
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    count = value_count(param)
    return None if count is None else [value_at(param, k) for k in range(count)]


def snap(param: Param, value: float) -> Any:
    """Clamp a raw sample into the parameter's range and onto its values."""
    if isinstance(param, CategoricalParam):
        return param.choices[min(max(round(value), 0), len(param.choices) - 1)]
    value = min(max(value, param.min), param.max)
    if value_count(param) is None:
        return float(value)
    chosen = value_at(param, nearest_index(param, value))
    return int(chosen) if isinstance(param, IntParam) else float(chosen)


def sample_random(space: dict[str, Param], rng: np.random.Generator) -> dict[str, Any]:
    """Uniform over choices and linear steps, log-uniform (then the nearest value) with `log`."""
    params: dict[str, Any] = {}
    for name, param in space.items():
        if isinstance(param, CategoricalParam):
            params[name] = param.choices[int(rng.integers(len(param.choices)))]
            continue
        count = value_count(param)
        if count is not None and not param.log:
            params[name] = value_at(param, int(rng.integers(count)))
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


def space_axes(space: dict[str, Param]) -> list[list[Any]] | None:
    """Every parameter's values, or None when some float has no step (an infinite space)."""
    axes = [param_values(param) for param in space.values()]
    if any(axis is None for axis in axes):
        return None
    return [axis for axis in axes if axis is not None]


def point_at(names: list[str], axes: list[list[Any]], index: int) -> dict[str, Any]:
    """The `index`-th combination of the axes (the last parameter varies fastest)."""
    params: dict[str, Any] = {}
    rest = int(index)
    for name, axis in zip(reversed(names), reversed(axes), strict=True):
        rest, position = divmod(rest, len(axis))
        params[name] = axis[position]
    return {name: params[name] for name in names}


def untried(space: dict[str, Param], seen: set[str], rng: np.random.Generator) -> dict[str, Any]:
    """A configuration not in `seen`, uniformly among the untried ones of a finite space (which
    is exhausted only when none is left), a fresh random sample of an infinite one."""
    axes = space_axes(space)
    if axes is None:
        # A float without a step takes a new value with probability 1.
        while True:
            params = sample_random(space, rng)
            if params_key(params) not in seen:
                return params
    names = list(space)
    size = math.prod(len(axis) for axis in axes)
    if len(seen) >= size:
        raise SpaceExhausted(f"all {size:,} configurations of the space have been tried")
    if len(seen) <= size // 2:
        # At least half is untried: each draw succeeds with probability >= 1/2.
        while True:
            params = point_at(names, axes, int(rng.integers(size)))
            if params_key(params) not in seen:
                return params
    # More than half is tried, so size < 2 * len(seen) (at most 20,000 trials): list what is left.
    left = [i for i in range(size) if params_key(point_at(names, axes, i)) not in seen]
    if not left:
        raise SpaceExhausted(f"all {size:,} configurations of the space have been tried")
    return point_at(names, axes, left[int(rng.integers(len(left)))])


class GridSearch:
    """Every combination, in a seeded shuffled order (so a study cut short by max_trials still
    spreads over the whole grid). Trial n takes the n-th point."""

    def __init__(self, space: dict[str, Param], grid_points: int, seed: int) -> None:
        axes: list[list[Any]] = []
        for param in space.values():
            values = param_values(param)
            if values is None:
                assert isinstance(param, FloatParam)
                values = float_grid(param, grid_points)
            axes.append(values)
        self.names = list(space)
        self.axes = axes
        self.size = math.prod(len(a) for a in axes)
        self.order = np.random.default_rng(seed).permutation(self.size)

    def point(self, index: int) -> dict[str, Any]:
        return point_at(self.names, self.axes, index)

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
        rng = np.random.default_rng(trial_seed(self.seed, number))
        params = sample_random(self.space, rng)
        if params_key(params) not in seen:
            return params
        return untried(self.space, seen, rng)


class ModelSearch:
    """What the model-based algorithms share: random for trials numbered below `startup_trials`
    (by number, so parallel asks do not stretch the random start), then the model, asked again
    with a new seed after a repeat, and an untried configuration when the model keeps
    repeating."""

    def __init__(self, space: dict[str, Param], seed: int, startup_trials: int) -> None:
        self.space = space
        self.seed = seed
        self.startup_trials = startup_trials

    def model_suggest(self, history: Sequence[TrialHistory], seed: int) -> dict[str, Any]:
        raise NotImplementedError

    def suggest(self, number: int, history: Sequence[TrialHistory]) -> dict[str, Any]:
        seen = {params_key(t.params) for t in history}
        rng = np.random.default_rng(trial_seed(self.seed, number))
        modelled = any(t.final_loss is not None for t in history)
        if number < self.startup_trials or not modelled:
            params = sample_random(self.space, rng)
            return params if params_key(params) not in seen else untried(self.space, seen, rng)
        for retry in range(MODEL_RETRIES):
            seed = int(np.random.default_rng(trial_seed(self.seed, number, retry)).integers(2**31))
            params = self.model_suggest(history, seed)
            if params_key(params) not in seen:
                return params
        return untried(self.space, seen, rng)


class HyperoptSearch(ModelSearch):
    """hyperopt's TPE or simulated annealing, asked one trial at a time.

    Every trial goes into hyperopt's Trials as a document: completed ones as DONE with their
    loss; failed, cancelled and pruned ones as DONE with status 'fail' (an ERROR document would
    vanish from TPE; a pruned trial's intermediate value is no final loss), which TPE counts as
    infinitely bad; running ones as RUNNING, also counted as infinitely bad, so parallel asks
    are pushed away from the configurations still running (a constant liar) instead of
    repeating them. `gamma` sets how many of the best trials TPE models as good
    (StudySpecModel's tpe_gamma). Parameters with a linear list of values (ints, stepped
    floats) are searched as indices into it, categorical values as choice indices, log ones
    with a step log-uniformly and then snapped to the nearest value.
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

        super().__init__(space, seed, startup_trials)
        self.algorithm = algorithm
        self.gamma = gamma
        self.hyperopt_space: dict[str, Any] = {}
        for name, param in space.items():
            if isinstance(param, CategoricalParam):
                node = hp.choice(name, list(range(len(param.choices))))
                self.hyperopt_space[name] = node
                continue
            count = indexed_count(param)
            if count is not None:
                node = hp.quniform(name, -0.5, count - 0.5, 1)
            elif value_count(param) is not None:
                last = value_at(param, (value_count(param) or 1) - 1)
                node = hp.loguniform(name, math.log(param.min), math.log(last))
            elif param.log:
                node = hp.loguniform(name, math.log(param.min), math.log(param.max))
            else:
                node = hp.uniform(name, param.min, param.max)
            self.hyperopt_space[name] = node

    def encode(self, params: dict[str, Any]) -> dict[str, float]:
        """Parameter values in hyperopt's own terms (indices for choices and linear steps)."""
        encoded: dict[str, float] = {}
        for name, param in self.space.items():
            value = params[name]
            if isinstance(param, CategoricalParam):
                encoded[name] = float([repr(c) for c in param.choices].index(repr(value)))
            elif indexed_count(param) is not None:
                encoded[name] = float(nearest_index(param, float(value)))
            else:
                encoded[name] = float(value)
        return encoded

    def decode(self, vals: dict[str, float]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, param in self.space.items():
            raw = float(vals[name])
            count = None if isinstance(param, CategoricalParam) else indexed_count(param)
            if count is not None:
                assert not isinstance(param, CategoricalParam)
                params[name] = value_at(param, min(max(round(raw), 0), count - 1))
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
            elif trial.final_loss is not None:
                result = {"status": STATUS_OK, "loss": trial.final_loss}
            else:
                result = {"status": STATUS_FAIL}
            (doc,) = trials.new_trial_docs([trial.number], [None], [result], [misc])
            doc["state"] = JOB_STATE_RUNNING if trial.state == "running" else JOB_STATE_DONE
            docs.append(doc)
        trials.insert_trial_docs(docs)
        trials.refresh()
        return trials

    def model_suggest(self, history: Sequence[TrialHistory], seed: int) -> dict[str, Any]:
        from hyperopt import anneal, tpe
        from hyperopt.base import Domain

        domain = Domain(lambda _: 0.0, self.hyperopt_space)
        trials = self._trials(history)
        number = len(history)
        if self.algorithm == "tpe":
            docs = tpe.suggest([number], domain, trials, seed, n_startup_jobs=0, gamma=self.gamma)
        else:
            docs = anneal.suggest([number], domain, trials, seed)
        vals = {name: values[0] for name, values in docs[0]["misc"]["vals"].items() if values}
        return self.decode(vals)


class MultivariateTpeSearch(ModelSearch):
    """Optuna's multivariate TPE (`TPESampler(multivariate=True, group=True,
    constant_liar=True, n_ei_candidates=MTPE_EI_CANDIDATES)`), asked through ask/tell on an
    in-memory study rebuilt from the history on every ask.

    It models the parameters jointly (a kernel density over whole configurations, not one per
    parameter). Running trials go in as RUNNING: the constant liar counts them among the bad
    ones, so parallel asks spread out. Pruned trials go in as PRUNED with their last
    intermediate value at its resource: Optuna ranks them below every completed trial, by how
    far they got and then by that value. Failed and cancelled trials go in as PRUNED without
    values: below every other trial. Parameters with a linear list of values are searched as
    indices into it; log ones with a step log-uniformly and then snapped to the nearest value.
    """

    def __init__(self, space: dict[str, Param], seed: int, startup_trials: int) -> None:
        from optuna.distributions import (  # slow to import: only when a study uses it
            BaseDistribution,
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        super().__init__(space, seed, startup_trials)
        self.distributions: dict[str, BaseDistribution] = {}
        self.indexed: dict[str, FloatParam | IntParam] = {}
        for name, param in space.items():
            if isinstance(param, CategoricalParam):
                self.distributions[name] = CategoricalDistribution(param.choices)
                continue
            count = indexed_count(param)
            if count is not None:
                self.indexed[name] = param
                self.distributions[name] = IntDistribution(0, count - 1)
            elif value_count(param) is not None:
                last = value_at(param, (value_count(param) or 1) - 1)
                self.distributions[name] = FloatDistribution(param.min, last, log=True)
            else:
                self.distributions[name] = FloatDistribution(param.min, param.max, log=param.log)

    def encode(self, params: dict[str, Any]) -> dict[str, Any]:
        encoded = dict(params)
        for name, param in self.indexed.items():
            encoded[name] = nearest_index(param, float(params[name]))
        return encoded

    def decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, param in self.space.items():
            if name in self.indexed:
                params[name] = value_at(self.indexed[name], int(raw[name]))
            elif isinstance(param, CategoricalParam):
                params[name] = raw[name]
            else:
                params[name] = snap(param, float(raw[name]))
        return params

    def model_suggest(self, history: Sequence[TrialHistory], seed: int) -> dict[str, Any]:
        import optuna
        from optuna.samplers import TPESampler
        from optuna.trial import TrialState, create_trial

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            # multivariate, group and constant_liar are marked experimental.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = TPESampler(
                seed=seed,
                n_startup_trials=0,
                n_ei_candidates=MTPE_EI_CANDIDATES,
                multivariate=True,
                group=True,
                constant_liar=True,
            )
        study = optuna.create_study(sampler=sampler, direction="minimize")
        for trial in history:
            common: dict[str, Any] = {
                "params": self.encode(trial.params),
                "distributions": self.distributions,
            }
            if trial.state == "running":
                frozen = create_trial(state=TrialState.RUNNING, **common)
            elif trial.final_loss is not None:
                frozen = create_trial(state=TrialState.COMPLETE, value=trial.final_loss, **common)
            elif trial.state == "pruned" and trial.loss is not None and math.isfinite(trial.loss):
                step = trial.resource if trial.resource is not None else 0
                frozen = create_trial(
                    state=TrialState.PRUNED, intermediate_values={step: trial.loss}, **common
                )
            else:
                frozen = create_trial(state=TrialState.PRUNED, **common)
            study.add_trial(frozen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            asked = study.ask(self.distributions)
        return self.decode(asked.params)


def build_algorithm(spec: StudySpecModel) -> SearchAlgorithm:
    if spec.algorithm == "grid":
        return GridSearch(spec.search_space, spec.grid_points, spec.seed)
    if spec.algorithm == "random":
        return RandomSearch(spec.search_space, spec.seed)
    if spec.algorithm == "mtpe":
        return MultivariateTpeSearch(spec.search_space, spec.seed, spec.startup_trials)
    return HyperoptSearch(
        spec.search_space, spec.seed, spec.algorithm, spec.startup_trials, spec.tpe_gamma
    )
