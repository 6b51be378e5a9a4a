"""matrec's HPO search against Optuna and hyperopt on objectives with a known optimum, in one run.

    python benchmarks/hpo_compare.py [--seeds 10] [--trials 60 | --budget UNITS]
                                     [--max-resource 27] [--startup 10] [--gap-scale 1]
                                     [--objective all|branin|hartmann3] [--methods A,B,...]
                                     [--quick] [--json OUT]

**Objectives.** Two classic test functions whose minimum is known, as the *final* loss of a
simulated training run of `R` resource units (`--max-resource`, default 27 "epochs"):

* ``branin``: 2-D, x1 in [-5, 10], x2 in [0, 15], minimum f* = 0.397887 (three global minima);
* ``hartmann3``: 3-D, x in [0, 1]^3, minimum f* = -3.86278 at (0.114614, 0.555649, 0.852547).

A trial reports one loss per resource unit r = 1..R (its learning curve)::

    loss(x, r) = f(x) + G * exp(0.5 * z0(x)) * d(r) * (1 + 0.1 * z_r(x))
    d(r)       = (r**-0.5 - R**-0.5) / (1 - R**-0.5)          # 1 at r = 1, 0 at r = R

so loss(x, R) = f(x) exactly, and earlier values sit above it by a gap that shrinks like
1/sqrt(r). `z0(x)` (how fast this configuration learns) and `z_r(x)` (per-report noise) are
standard normal draws from a generator seeded by a hash of the configuration's values: the same
configuration always has the same curve, whichever method asks for it and in which seed, so the
objective is fixed. `G` is about a quarter of the median of f - f* over the domain (medians 35
and 3.3, so G = 10 for Branin and 0.8 for Hartmann-3; `--gap-scale` multiplies it): early
reports separate bad regions from good ones but rank near-optimal configurations partly at random
(a config that learns slowly can look worse at r = 1 or 3 than one that ends worse), which is
what makes early stopping a trade-off.

**Compute and budget.** Compute is resource units consumed: a full trial costs R, a pruned one
the units it reported before it was stopped. Every method gets the same compute budget,
`--trials` x R (default 60 x 27 = 1620 units): the methods without pruning run exactly `--trials`
full trials; the ones with pruning start trials until the budget is spent (many more trials,
most of them stopped early). A value counts once it is reported within the budget.

**What is compared** (every method seeded with the seed, startup trials matched at
`--startup`, default 10):

* matrec random, matrec TPE, matrec TPE+ASHA: `matrec.coordinator.hpo.search.RandomSearch`
  and `HyperoptSearch(..., "tpe", startup)`, `matrec.coordinator.hpo.pruning.AshaPruner(1, 3)`,
  driven the way the coordinator's StudyDriver drives them: after every report each running
  trial is judged (its `judged` kept between calls), a pruned trial enters the history with the
  value at its verdict's resource as loss, a completed one with its final value, running ones as
  "running" with no loss; one trial at a time;
* matrec TPE+ASHA x4: the same with four workers (max_parallel = 4) advancing in lock step, so
  new trials are asked while others run (hyperopt's constant liar in matrec's HyperoptSearch);
* hyperopt fmin: `fmin(algo=partial(tpe.suggest, n_startup_jobs=startup), rstate=seeded)`;
* Optuna TPE: `TPESampler(n_startup_trials=startup, seed=seed)` (Optuna's defaults otherwise,
  which in Optuna 5 means the multivariate TPE), ask/tell; not run by default, "Optuna TPE
  independent" (`--methods`) is the same with `multivariate=False`, hyperopt's kind of TPE;
* Optuna TPE+Hyperband: the same with `HyperbandPruner(1, R, 3)`, and Optuna TPE+ASHA with
  `SuccessiveHalvingPruner(1, 3)` (the same rule as matrec's ASHA); the trial reports every
  value with `trial.report` and stops when `trial.should_prune()` says so.

**What is reported**, per objective and method, over `--seeds` seeds (mean ± sd): the best
*full-resource* loss (a value reported at r = R, i.e. of a fully trained configuration) reached
within 25 %, 50 % and 100 % of the budget, as regret f_best - f*; and the compute needed to first
reach each of two regret targets with a fully trained configuration (median over seeds, a seed
that never reaches it counting as "more than the budget"; and in how many seeds it was reached).
The targets were set from a pilot of matrec TPE alone (40 seeds), before any pruning method was
compared: the first (Branin 0.7, Hartmann-3 0.3) is about the 80th percentile of its final
regret, so TPE reaches it in about 4 seeds out of 5; the second (0.3, 0.15) about the median.

Then the checks: matrec TPE's mean final regret against hyperopt fmin's (with the standard
error of the difference: the two run the same hyperopt TPE, so only the random streams differ),
and the TPE+ASHA runs' median compute to the first target against TPE's ("clearly less" means a
ratio of at most 2/3 and earlier in most seeds). Nothing is asserted: the script prints what it
measured. `--json OUT` keeps every run's reports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matrec.common.studies import (
    CategoricalParam,
    FloatParam,
    IntParam,
    Param,
    StudySpecModel,
    parse_search_space,
)
from matrec.coordinator.hpo.pruning import AshaPruner, NoPruner, Pruner
from matrec.coordinator.hpo.search import (
    HistoryState,
    HyperoptSearch,
    MultivariateTpeSearch,
    RandomSearch,
    SearchAlgorithm,
    TrialHistory,
    params_key,
)

#: What a study uses unless told otherwise (the coordinator's defaults).
TPE_GAMMA: float = StudySpecModel.model_fields["tpe_gamma"].default
DEFAULT_ALGORITHM: str = StudySpecModel.model_fields["algorithm"].default

ASHA_MIN_RESOURCE = 1
ASHA_REDUCTION_FACTOR = 3
BUDGET_FRACTIONS = (0.25, 0.5, 1.0)


# --- objectives ---------------------------------------------------------------------------------


def branin(p: dict[str, float]) -> float:
    x1, x2 = p["x1"], p["x2"]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


HARTMANN3_ALPHA = (1.0, 1.2, 3.0, 3.2)
HARTMANN3_A = ((3.0, 10.0, 30.0), (0.1, 10.0, 35.0), (3.0, 10.0, 30.0), (0.1, 10.0, 35.0))
HARTMANN3_P = (
    (0.3689, 0.1170, 0.2673),
    (0.4699, 0.4387, 0.7470),
    (0.1091, 0.8732, 0.5547),
    (0.0381, 0.5743, 0.8828),
)


def hartmann3(p: dict[str, float]) -> float:
    x = (p["x1"], p["x2"], p["x3"])
    total = 0.0
    for alpha, a_row, p_row in zip(HARTMANN3_ALPHA, HARTMANN3_A, HARTMANN3_P, strict=True):
        total += alpha * math.exp(
            -sum(a * (xj - pj) ** 2 for a, xj, pj in zip(a_row, x, p_row, strict=True))
        )
    return -total


def ackley(p: dict[str, float]) -> float:
    x = np.array([p[name] for name in sorted(p, key=lambda n: int(n[1:]))])
    d = len(x)
    return float(
        -20 * math.exp(-0.2 * math.sqrt(float(np.sum(x**2)) / d))
        - math.exp(float(np.sum(np.cos(2 * math.pi * x))) / d)
        + 20
        + math.e
    )


def rosenbrock(p: dict[str, float]) -> float:
    x = np.array([p[name] for name in sorted(p, key=lambda n: int(n[1:]))])
    return float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


#: The seed-shaped space's best learning rate (log10) depends on the optimizer, and its best
#: dropout on dense_units: interactions a one-parameter-at-a-time model cannot represent.
SEEDLIKE_LOG_LR = {"adamw": -2.7, "sgd": -2.0, "rmsprop": -3.3}
SEEDLIKE_PENALTY = {"adamw": 0.0, "sgd": 0.3, "rmsprop": 0.15}


def seedlike(p: dict[str, Any]) -> float:
    optimizer = str(p["optimizer"])
    units = (float(p["dense_units"]) - 64) / 448  # 0..1
    return (
        (math.log10(float(p["learning_rate"])) - SEEDLIKE_LOG_LR[optimizer]) ** 2
        + 4 * (float(p["dropout_rate"]) - 0.1 - 0.4 * units) ** 2
        + 0.5 * (units - 256 / 448) ** 2
        + SEEDLIKE_PENALTY[optimizer]
    )


@dataclass(frozen=True)
class Objective:
    name: str
    raw_space: dict[str, dict[str, Any]]
    function: Callable[[dict[str, float]], float]
    optimum: float
    # G in the module docstring: about a quarter of the median of f - f* over the domain.
    gap: float
    # Regret targets for "compute to reach a target": the first, used by the check, is about
    # the 80th percentile of matrec TPE's final regret over 40 pilot seeds (TPE reaches it in
    # about 4 seeds out of 5); the second is about its median.
    targets: tuple[float, float]

    @property
    def space(self) -> dict[str, Param]:
        return parse_search_space(self.raw_space)


OBJECTIVES: dict[str, Objective] = {
    "branin": Objective(
        name="branin",
        raw_space={
            "x1": {"type": "float", "min": -5.0, "max": 10.0},
            "x2": {"type": "float", "min": 0.0, "max": 15.0},
        },
        function=branin,
        optimum=0.397887,
        gap=10.0,
        targets=(0.7, 0.3),
    ),
    "hartmann3": Objective(
        name="hartmann3",
        raw_space={f"x{i}": {"type": "float", "min": 0.0, "max": 1.0} for i in (1, 2, 3)},
        function=hartmann3,
        optimum=-3.86278,
        gap=0.8,
        targets=(0.3, 0.15),
    ),
    "ackley6": Objective(
        name="ackley6",
        raw_space={f"x{i}": {"type": "float", "min": -5.0, "max": 5.0} for i in range(1, 7)},
        function=ackley,
        optimum=0.0,
        gap=2.6,
        targets=(5.0, 3.0),
    ),
    "rosenbrock6": Objective(
        name="rosenbrock6",
        raw_space={f"x{i}": {"type": "float", "min": -2.0, "max": 2.0} for i in range(1, 7)},
        function=rosenbrock,
        optimum=0.0,
        gap=500.0,
        targets=(50.0, 20.0),
    ),
    # Shaped like the seed's space: log float, float, stepped int, categorical. f* = 0 at
    # adamw, learning_rate 10**-2.7, dense_units 320, dropout 0.1 + 0.4 * 256 / 448.
    "seedlike": Objective(
        name="seedlike",
        raw_space={
            "learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": True},
            "dropout_rate": {"type": "float", "min": 0.1, "max": 0.5},
            "dense_units": {"type": "int", "min": 64, "max": 512, "step": 64},
            "optimizer": {"type": "categorical", "choices": ["adamw", "sgd", "rmsprop"]},
        },
        function=seedlike,
        optimum=0.0,
        gap=0.18,
        targets=(0.1, 0.03),
    ),
}


class Curves:
    """The learning curve of every configuration of one objective (see the module docstring);
    deterministic in the configuration, cached."""

    def __init__(self, objective: Objective, max_resource: int, gap_scale: float) -> None:
        self.objective = objective
        self.max_resource = max_resource
        self.gap = objective.gap * gap_scale
        r = np.arange(1, max_resource + 1, dtype=float)
        tail = max_resource**-0.5
        self.decay = (r**-0.5 - tail) / (1.0 - tail)
        self._cache: dict[str, np.ndarray] = {}

    def curve(self, params: dict[str, Any]) -> np.ndarray:
        key = params_key(params)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        values = {name: params[name] for name in self.objective.raw_space}
        digest = hashlib.blake2b(f"{self.objective.name}|{key}".encode(), digest_size=8)
        rng = np.random.default_rng(int.from_bytes(digest.digest(), "little"))
        speed = math.exp(0.5 * rng.standard_normal())
        noise = 1.0 + 0.1 * rng.standard_normal(self.max_resource)
        final = self.objective.function(values)
        curve = final + self.gap * speed * self.decay * noise
        curve[-1] = final
        self._cache[key] = curve
        return curve


# --- one run of one method ----------------------------------------------------------------------


@dataclass
class Run:
    objective: str
    method: str
    seed: int
    budget: int
    #: (compute spent when it was reported, value) for every full-resource report, in order.
    finals: list[tuple[int, float]] = field(default_factory=list)
    trials: int = 0
    pruned: int = 0
    #: Trials that reported all R values and were then judged and pruned at the top rung.
    pruned_at_max_resource: int = 0
    #: CPU time of the whole run (the optimiser's own cost: the objective is nearly free).
    cpu_seconds: float = 0.0

    def best_regret(self, optimum: float, compute: float) -> float:
        values = [v for c, v in self.finals if c <= compute]
        return min(values) - optimum if values else math.inf

    def compute_to(self, optimum: float, regret: float) -> float:
        for c, v in self.finals:
            if v - optimum <= regret:
                return float(c)
        return math.inf


@dataclass
class SimTrial:
    number: int
    params: dict[str, Any]
    curve: list[float] = field(default_factory=list)
    state: HistoryState = "running"
    loss: float | None = None
    resource: int | None = None
    judged: int = 0


def run_matrec(
    run: Run,
    curves: Curves,
    algorithm: SearchAlgorithm,
    pruner: Pruner,
    workers: int,
) -> None:
    """Drive a matrec search algorithm and pruner as the coordinator's StudyDriver does: ask
    until `workers` trials run, every running trial reports its next value, each running trial
    is judged, trials that reported their last value and were not pruned complete; repeat until
    the budget is spent."""
    max_resource = curves.max_resource
    trials: list[SimTrial] = []
    spent = 0
    while True:
        running = [t for t in trials if t.state == "running"]
        history = [TrialHistory(t.number, t.params, t.state, t.loss, t.resource) for t in trials]
        while len(running) < workers and spent < run.budget:
            params = algorithm.suggest(len(trials), history)
            trial = SimTrial(len(trials), params)
            trials.append(trial)
            running.append(trial)
            history.append(TrialHistory(trial.number, params, "running"))
        if not running:
            break
        for trial in running:
            value = float(curves.curve(trial.params)[len(trial.curve)])
            trial.curve.append(value)
            spent += 1
            if len(trial.curve) == max_resource:
                run.finals.append((spent, value))
            if spent >= run.budget:
                break
        if spent >= run.budget:
            break
        losses = {t.number: t.curve for t in trials}
        for trial in running:
            verdict = pruner.judge(trial.number, losses, trial.judged, max_resource)
            if verdict.prune:
                trial.state = "pruned"
                trial.loss = trial.curve[verdict.resource - 1]
                trial.resource = verdict.resource
                run.pruned += 1
                if len(trial.curve) == max_resource:
                    run.pruned_at_max_resource += 1
            else:
                trial.judged = verdict.judged
                if len(trial.curve) == max_resource:
                    trial.state = "completed"
                    trial.loss = trial.curve[-1]
    run.trials = len(trials)


def hyperopt_space(space: dict[str, Param]) -> dict[str, Any]:
    """The space as a hyperopt user writes it (choices as hp.choice, stepped ints quantised)."""
    from hyperopt import hp
    from hyperopt.pyll import scope

    nodes: dict[str, Any] = {}
    for name, param in space.items():
        if isinstance(param, CategoricalParam):
            nodes[name] = hp.choice(name, list(param.choices))
        elif isinstance(param, IntParam):
            nodes[name] = scope.int(hp.quniform(name, param.min, param.max, param.step))
        elif param.log:
            nodes[name] = hp.loguniform(name, math.log(param.min), math.log(param.max))
        else:
            nodes[name] = hp.uniform(name, param.min, param.max)
    return nodes


def optuna_suggest(trial: Any, space: dict[str, Param]) -> dict[str, Any]:
    """The space as an Optuna user writes it."""
    params: dict[str, Any] = {}
    for name, param in space.items():
        if isinstance(param, CategoricalParam):
            params[name] = trial.suggest_categorical(name, list(param.choices))
        elif isinstance(param, IntParam):
            params[name] = trial.suggest_int(name, param.min, param.max, step=param.step)
        else:
            assert isinstance(param, FloatParam)
            params[name] = trial.suggest_float(name, param.min, param.max, log=param.log)
    return params


def run_hyperopt_fmin(run: Run, curves: Curves, startup: int) -> None:
    from hyperopt import Trials, fmin, tpe

    max_resource = curves.max_resource
    space = hyperopt_space(curves.objective.space)
    trials = Trials()
    fmin(
        fn=lambda params: float(curves.curve(params)[-1]),
        space=space,
        algo=partial(tpe.suggest, n_startup_jobs=startup),
        max_evals=run.budget // max_resource,
        trials=trials,
        rstate=np.random.default_rng(run.seed),
        show_progressbar=False,
    )
    run.trials = len(trials.trials)
    run.finals = [((i + 1) * max_resource, float(loss)) for i, loss in enumerate(trials.losses())]


def run_optuna_parallel(
    run: Run, curves: Curves, startup: int, multivariate: bool, workers: int
) -> None:
    """Optuna without pruning, `workers` trials at a time in lock step: ask `workers`, then tell
    them all (its constant liar sees the ones asked before)."""
    import optuna

    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(
            n_startup_trials=startup, seed=run.seed, multivariate=multivariate, constant_liar=True
        ),
        direction="minimize",
    )
    max_resource = curves.max_resource
    spent = 0
    while spent + max_resource <= run.budget:
        batch = []
        for _ in range(min(workers, (run.budget - spent) // max_resource)):
            trial = study.ask()
            batch.append((trial, optuna_suggest(trial, curves.objective.space)))
        for trial, params in batch:
            spent += max_resource
            value = float(curves.curve(params)[-1])
            run.finals.append((spent, value))
            run.trials += 1
            study.tell(trial, value)


def run_optuna(
    run: Run, curves: Curves, startup: int, pruner_kind: str, multivariate: bool | None = None
) -> None:
    import optuna

    max_resource = curves.max_resource
    pruner: optuna.pruners.BasePruner
    if pruner_kind == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=ASHA_MIN_RESOURCE,
            max_resource=max_resource,
            reduction_factor=ASHA_REDUCTION_FACTOR,
        )
    elif pruner_kind == "asha":
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=ASHA_MIN_RESOURCE, reduction_factor=ASHA_REDUCTION_FACTOR
        )
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(
            n_startup_trials=startup, seed=run.seed, multivariate=multivariate
        ),
        pruner=pruner,
        direction="minimize",
        # HyperbandPruner picks a trial's bracket from a hash of the study name: fix it, or the
        # run is not reproducible (the default name is random).
        study_name=f"hpo-compare-{run.objective}-{run.seed}",
    )
    space = curves.objective.space
    spent = 0
    while spent < run.budget:
        trial = study.ask()
        params = optuna_suggest(trial, space)
        run.trials += 1
        curve = curves.curve(params)
        pruned = False
        for step in range(1, max_resource + 1):
            value = float(curve[step - 1])
            spent += 1
            if step == max_resource:
                run.finals.append((spent, value))
            if spent >= run.budget:
                return
            if pruner_kind != "none":
                trial.report(value, step)
                if trial.should_prune():
                    pruned = True
                    run.pruned += 1
                    if step == max_resource:
                        run.pruned_at_max_resource += 1
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    break
        if not pruned:
            study.tell(trial, float(curve[-1]))


#: "matrec default" is the coordinator's default algorithm (`mtpe`) with its default startup
#: for the budget's trial count; x4: four workers in lock step (the constant liar at work).
METHODS = (
    "matrec default",
    "matrec default x4",
    "matrec TPE",
    "hyperopt fmin",
    "Optuna TPE",
    "Optuna multivariate TPE",
    "Optuna multivariate TPE x4",
)
#: Not run by default (the pruning runs start 4-7 times as many trials, and the stateless
#: rebuild of the multivariate TPE costs O(trials) per ask: together they would take most of the
#: 10 minutes).
EXTRA_METHODS = (
    "matrec default+ASHA",
    "matrec random",
    "matrec TPE x4",
    "matrec TPE+ASHA",
    "matrec TPE+ASHA x4",
    "matrec default+ASHA x4",
    "Optuna TPE+Hyperband",
    "Optuna TPE+ASHA",
)


def default_startup(trials: int) -> int:
    """The startup trials a study of `trials` trials gets by default."""
    spec = StudySpecModel.model_construct(max_trials=trials, n_startup_trials=None)
    return spec.startup_trials


def matrec_algorithm(name: str, space: dict[str, Param], seed: int, startup: int) -> Any:
    if name == "mtpe":
        return MultivariateTpeSearch(space, seed, startup)
    return HyperoptSearch(space, seed, name, startup, TPE_GAMMA)  # type: ignore[arg-type]


def run_method(method: str, curves: Curves, seed: int, budget: int, startup: int | None) -> Run:
    """`startup` None: every method its own default (matrec's for the trial count, 10 for
    Optuna and hyperopt), else the same for all."""
    run = Run(curves.objective.name, method, seed, budget)
    space = curves.objective.space
    trials = budget // curves.max_resource
    own = startup if startup is not None else default_startup(trials)
    theirs = startup if startup is not None else 10
    workers = 4 if method.endswith(" x4") else 1
    base = method.removesuffix(" x4")
    started = time.process_time()
    if base == "matrec random":
        run_matrec(run, curves, RandomSearch(space, seed), NoPruner(), workers)
    elif base in ("matrec default", "matrec TPE"):
        name = DEFAULT_ALGORITHM if base == "matrec default" else "tpe"
        run_matrec(run, curves, matrec_algorithm(name, space, seed, own), NoPruner(), workers)
    elif base in ("matrec default+ASHA", "matrec TPE+ASHA"):
        name = DEFAULT_ALGORITHM if base == "matrec default+ASHA" else "tpe"
        asha = AshaPruner(ASHA_MIN_RESOURCE, ASHA_REDUCTION_FACTOR)
        run_matrec(run, curves, matrec_algorithm(name, space, seed, own), asha, workers)
    elif base == "hyperopt fmin":
        run_hyperopt_fmin(run, curves, theirs)
    elif method == "Optuna TPE":
        run_optuna(run, curves, theirs, "none", multivariate=False)
    elif method == "Optuna multivariate TPE":
        run_optuna(run, curves, theirs, "none", multivariate=True)
    elif method == "Optuna multivariate TPE x4":
        run_optuna_parallel(run, curves, theirs, multivariate=True, workers=4)
    elif method == "Optuna TPE+Hyperband":
        run_optuna(run, curves, theirs, "hyperband")
    elif method == "Optuna TPE+ASHA":
        run_optuna(run, curves, theirs, "asha")
    else:
        raise ValueError(method)
    run.cpu_seconds = time.process_time() - started
    return run


# --- summary ------------------------------------------------------------------------------------


def fmt(value: float) -> str:
    if math.isinf(value):
        return "∞"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def mean_sd(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "none"
    text = fmt(statistics.fmean(finite))
    if len(finite) > 1:
        text += f" ± {fmt(statistics.stdev(finite))}"
    if len(finite) < len(values):
        text += f" ({len(values) - len(finite)} runs without a full trial)"
    return text


def median_compute(values: Sequence[float], budget: int) -> str:
    median = statistics.median(values)
    return f"> {budget}" if math.isinf(median) else f"{median:.0f}"


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    return by_method


def summarise(
    objective: Objective, runs: Sequence[Run], budget: int, max_resource: int
) -> list[str]:
    by_method = group_runs(runs)
    optimum = objective.optimum
    loose, tight = objective.targets
    seeds = len(next(iter(by_method.values())))
    lines = [
        f"#### {objective.name}: f* = {optimum:g}; budget {budget} units "
        f"(= {budget // max_resource} full trials of R = {max_resource}); {seeds} seeds",
        "",
        "Best full-resource regret (f_best - f*) within 25 / 50 / 100 % of the budget, "
        "mean ± sd over seeds:",
        "",
        "| method | trials | pruned | "
        + " | ".join(f"regret @ {round(f * 100)} %" for f in BUDGET_FRACTIONS)
        + " | median final regret | CPU s / run |",
        "|---|---|---|" + "---|" * len(BUDGET_FRACTIONS) + "---|---|",
    ]
    for method, group in by_method.items():
        cells = [
            method,
            f"{statistics.fmean(r.trials for r in group):.0f}",
            f"{statistics.fmean(r.pruned for r in group):.0f}",
        ]
        cells += [
            mean_sd([r.best_regret(optimum, f * budget) for r in group]) for f in BUDGET_FRACTIONS
        ]
        cells.append(fmt(median_final(objective, group, budget)))
        cells.append(f"{statistics.fmean(r.cpu_seconds for r in group):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Compute (resource units) to first reach regret ≤ {fmt(loose)} and ≤ {fmt(tight)} with a "
        "fully trained configuration: median over seeds (a seed that never reaches it counts as "
        f"more than the budget, so a median of > {budget} means most seeds did not reach it), "
        "and how many seeds reached it:",
        "",
        f"| method | regret ≤ {fmt(loose)}: median units | reached | "
        f"regret ≤ {fmt(tight)}: median units | reached |",
        "|---|---|---|---|---|",
    ]
    for method, group in by_method.items():
        cells = [method]
        for target in (loose, tight):
            computes = [r.compute_to(optimum, target) for r in group]
            reached = sum(1 for c in computes if math.isfinite(c))
            cells += [median_compute(computes, budget), f"{reached}/{len(group)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def median_final(objective: Objective, runs: Sequence[Run], budget: int) -> float:
    return statistics.median(r.best_regret(objective.optimum, budget) for r in runs)


#: The issue's goal: matrec's default has the best median final regret against these, run
#: sequentially, and with four workers stays within 10 % of its own sequential regret.
RIVALS = ("Optuna TPE", "Optuna multivariate TPE", "hyperopt fmin")
PARALLEL_TOLERANCE = 0.10


def goal_lines(objective: Objective, runs: Sequence[Run], budget: int) -> list[str]:
    by_method = group_runs(runs)
    mine = by_method.get("matrec default")
    if not mine:
        return []
    lines: list[str] = []
    ours = median_final(objective, mine, budget)
    rivals = {m: median_final(objective, by_method[m], budget) for m in RIVALS if m in by_method}
    if rivals:
        best_rival = min(rivals, key=lambda m: rivals[m])
        verdict = "met" if ours <= rivals[best_rival] else "MISSED"
        lines.append(
            f"- {objective.name}: goal best median final regret sequentially: {verdict} "
            f"(matrec default {fmt(ours)}; "
            + ", ".join(f"{m} {fmt(v)}" for m, v in rivals.items())
            + ")"
        )
    parallel = by_method.get("matrec default x4")
    if parallel:
        theirs = median_final(objective, parallel, budget)
        limit = ours * (1 + PARALLEL_TOLERANCE)
        verdict = "met" if theirs <= limit + 1e-12 else "MISSED"
        lines.append(
            f"- {objective.name}: goal 4 workers within 10 % of sequential: {verdict} "
            f"(x4 {fmt(theirs)} vs sequential {fmt(ours)}, limit {fmt(limit)})"
        )
    return lines


def compare_regret(objective: Objective, mine: list[Run], theirs: list[Run], budget: int) -> str:
    """matrec TPE's mean final regret against hyperopt fmin's, with the noise of the difference."""
    a = [r.best_regret(objective.optimum, budget) for r in mine]
    b = [r.best_regret(objective.optimum, budget) for r in theirs]
    mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    verdict = "yes" if mean_a <= mean_b else "no"
    if mean_a > mean_b:
        verdict += (
            " (but within noise: the difference is under 2 standard errors)"
            if mean_a - mean_b < 2 * se
            else " (more than 2 standard errors)"
        )
    wins = sum(1 for x, y in zip(a, b, strict=True) if x <= y)
    return (
        f"- {objective.name}: matrec TPE vs hyperopt fmin: mean final regret {fmt(mean_a)} vs "
        f"{fmt(mean_b)} (no worse: {verdict}); standard error of the difference {fmt(se)}; "
        f"matrec TPE ≤ hyperopt in {wins}/{len(a)} seeds"
    )


def compare_compute(
    objective: Objective, pruned: list[Run], full: list[Run], budget: int, label: str
) -> str:
    """Median compute to the first target of a pruning method against TPE without pruning."""
    target = objective.targets[0]
    a = [r.compute_to(objective.optimum, target) for r in pruned]
    b = [r.compute_to(objective.optimum, target) for r in full]
    median_a, median_b = statistics.median(a), statistics.median(b)
    earlier = sum(1 for x, y in zip(a, b, strict=True) if x < y)
    reached = f"reached in {sum(map(math.isfinite, a))} vs {sum(map(math.isfinite, b))} seeds"
    if math.isfinite(median_a) and math.isfinite(median_b):
        ratio = median_a / median_b
        clearly = "yes" if ratio <= 2 / 3 and earlier > len(a) / 2 else "no"
        summary = (
            f"ratio {ratio:.2f}; clearly less (ratio ≤ 0.67 and earlier in most seeds): {clearly}"
        )
    elif math.isfinite(median_a):
        summary = "TPE's median is over the budget; clearly less: yes"
    elif math.isfinite(median_b):
        summary = f"{label}'s median is over the budget; clearly less: no"
    else:
        summary = "neither reaches it in most seeds; clearly less: no"
    return (
        f"- {objective.name}: {label} compute to regret ≤ {fmt(target)} vs TPE: median "
        f"{median_compute(a, budget)} vs {median_compute(b, budget)} units, {summary}; "
        f"{label} earlier in {earlier}/{len(a)} seeds, {reached}"
    )


def checks(objective: Objective, runs: Sequence[Run], budget: int) -> list[str]:
    by_method = group_runs(runs)
    lines: list[str] = goal_lines(objective, runs, budget)
    tpe = by_method.get("matrec TPE")
    if tpe and "hyperopt fmin" in by_method:
        lines.append(compare_regret(objective, tpe, by_method["hyperopt fmin"], budget))
    for label in ("matrec TPE+ASHA", "matrec TPE+ASHA x4"):
        if tpe and label in by_method:
            lines.append(compare_compute(objective, by_method[label], tpe, budget, label))
    for method, group in by_method.items():
        at_top = statistics.fmean(r.pruned_at_max_resource for r in group)
        if at_top:
            full = statistics.fmean(len(r.finals) for r in group)
            lines.append(
                f"- {objective.name}: {method}: {at_top:.1f} of the {full:.1f} trials per run "
                "that reported all R values were then judged at the top rung (R is a rung) and "
                "pruned"
            )
    return lines


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 (default 20)")
    parser.add_argument(
        "--trials",
        type=int,
        default=60,
        help="the budget, in full trials: every method gets TRIALS x R units (default 60)",
    )
    parser.add_argument(
        "--budget", type=int, default=None, help="the budget in resource units (overrides --trials)"
    )
    parser.add_argument("--max-resource", type=int, default=27, help="R (default 27)")
    parser.add_argument(
        "--startup",
        type=int,
        default=None,
        help="random startup trials of every TPE (default: each its own default: matrec's for "
        "the trial count, 10 for Optuna and hyperopt)",
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="processes running seeds at once (default 2)"
    )
    parser.add_argument(
        "--objective", choices=["all", *OBJECTIVES], default="all", help="default: all"
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated; default: {','.join(METHODS)}; also: {','.join(EXTRA_METHODS)}",
    )
    parser.add_argument(
        "--gap-scale", type=float, default=1.0, help="multiplies the learning-curve gap G"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 20 trials, R = 9")
    parser.add_argument("--json", type=Path, default=None, help="write every run here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.trials, args.max_resource = 2, 20, 9
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in (*METHODS, *EXTRA_METHODS)]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS + EXTRA_METHODS)}")
    args.methods = methods
    if args.budget is None:
        args.budget = args.trials * args.max_resource
    return args


def quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hyperopt").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_seed(objective: str, method: str, args: argparse.Namespace, seed: int) -> Run:
    quiet()
    curves = Curves(OBJECTIVES[objective], args.max_resource, args.gap_scale)
    return run_method(method, curves, seed, args.budget, args.startup)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import optuna

    quiet()

    started = time.perf_counter()
    objectives = list(OBJECTIVES.values())
    if args.objective != "all":
        objectives = [OBJECTIVES[args.objective]]
    all_runs: list[Run] = []
    report: list[str] = []
    check_lines: list[str] = []
    for objective in objectives:
        runs: list[Run] = []
        for method in args.methods:
            method_started = time.perf_counter()
            work = partial(run_seed, objective.name, method, args)
            if args.jobs > 1:
                with ProcessPoolExecutor(args.jobs) as pool:
                    runs += list(pool.map(work, range(args.seeds)))
            else:
                runs += [work(seed) for seed in range(args.seeds)]
            cpu = sum(r.cpu_seconds for r in runs if r.method == method)
            print(
                f"{objective.name:11} {method:26} {time.perf_counter() - method_started:6.1f} s "
                f"wall, {cpu:6.1f} s CPU",
                file=sys.stderr,
                flush=True,
            )
        all_runs += runs
        report += [*summarise(objective, runs, args.budget, args.max_resource), ""]
        check_lines += checks(objective, runs, args.budget)
    elapsed = time.perf_counter() - started

    import hyperopt

    print(
        f"### HPO comparison ({datetime.now(UTC):%Y-%m-%d}; Python {platform.python_version()}, "
        f"hyperopt {hyperopt.__version__}, optuna {optuna.__version__}; "
        f"{os.cpu_count()} CPUs)\n"
    )
    print(
        f"R = {args.max_resource}, budget {args.budget} units per run, "
        f"startup {args.startup if args.startup is not None else 'each method its default'}, "
        f"ASHA min_resource {ASHA_MIN_RESOURCE}, reduction factor {ASHA_REDUCTION_FACTOR}, "
        f"gap scale {args.gap_scale:g}\n"
    )
    print("\n".join(report))
    print("Checks:\n")
    print("\n".join(check_lines))
    cpu = sum(r.cpu_seconds for r in all_runs)
    print(
        f"\nelapsed {elapsed:.0f} s wall with {args.jobs} processes; the runs' CPU time "
        f"{cpu:.0f} s (over {args.jobs} cores: {cpu / max(args.jobs, 1):.0f} s)"
    )
    if args.json:
        payload = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "objectives": {
                o.name: {"optimum": o.optimum, "gap": o.gap, "targets": o.targets}
                for o in objectives
            },
            "elapsed_s": elapsed,
            "runs": [asdict(r) for r in all_runs],
        }
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
