"""A study aggregated for the dashboard's charts: whatever the number of trials, every series
holds at most `max_points` points, so a study of 10,000 trials costs the browser what one of
1,000 does.

The document (`summarize`):
- study: id, name, state, objective, direction, algorithm, pruner kind, created/finished (ISO)
- counts: trials per state; best: {number, value, params} or null
- history: {number, value, state} lists: each trial's objective by trial number, downsampled by
  keeping each bucket's lowest and highest point of each state (outliers stay visible)
- best_so_far: {number, value}: the best completed objective so far, only where it changed
- curves: the intermediate objective (per resource) of the best completed trials and of a
  sample of pruned ones, each {number, state, resource[], value[], pruned_resource}
- pruned_by_rung: {rung: count}
- params: per parameter {name, type, log, choices, importance, x[], value[]}: objective against
  the parameter on a sample of trials; importance is the share of the objective's variance that
  the parameter's bins explain (correlation ratio), normalised to sum 1: a quick estimate, not
  fANOVA
- parallel: {axes: [{name, type, log, low, high, choices}], rows: [[axis values..., value]]}
  on the same sample
- table: {total, rows: [{number, state, value, params, pruned_resource, job_id, error}]}
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from matrec.coordinator import schema
from matrec.coordinator.hpo.study_store import Point, StudyRecord, _study

DEFAULT_MAX_POINTS = 1000
CURVES_BEST = 20
CURVES_PRUNED = 20
IMPORTANCE_BINS = 10
SORTS = ("number", "value")


@dataclass(frozen=True)
class SummaryTrial:
    """What the summary needs of a trial (read without its job: 10,000 job results would
    cost more than everything else together)."""

    number: int
    state: str
    params: dict[str, Any]
    objective_value: float | None
    pruned_rung: int | None
    pruned_resource: int | None
    job_id: str | None
    error: str


def load_study(engine: sa.Engine, study_id: str) -> tuple[StudyRecord, list[SummaryTrial]] | None:
    """The study (without trial records) and its trials as the summary needs them."""
    t = schema.trials
    columns = (
        t.c.number, t.c.state, t.c.params, t.c.objective_value, t.c.pruned_rung,
        t.c.pruned_resource, t.c.job_id, t.c.error,
    )  # fmt: skip
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.studies).where(schema.studies.c.id == study_id)).first()
        if row is None:
            return None
        trials = [
            SummaryTrial(r[0], r[1], dict(r[2]), r[3], r[4], r[5], r[6], r[7])
            for r in conn.execute(
                sa.select(*columns).where(t.c.study_id == study_id).order_by(t.c.number)
            )
        ]
    return _study(row, []), trials


@dataclass(frozen=True)
class TrialTableQuery:
    states: Sequence[str] = ()
    param: str = ""
    param_min: float | None = None
    param_max: float | None = None
    sort: str = "number"
    descending: bool = False
    offset: int = 0
    page_size: int = 50


def _valued(trials: Iterable[SummaryTrial]) -> list[SummaryTrial]:
    return [t for t in trials if t.objective_value is not None and math.isfinite(t.objective_value)]


def downsample_history(trials: Sequence[SummaryTrial], max_points: int) -> dict[str, list[Any]]:
    """Objective by trial number; at most about `max_points` points: the trials are cut into
    buckets by number and each bucket keeps, per state, its lowest and highest value."""
    valued = sorted(_valued(trials), key=lambda t: t.number)
    if len(valued) > max_points:
        states = {t.state for t in valued}
        buckets = max(1, max_points // (2 * max(1, len(states))))
        size = math.ceil(len(valued) / buckets)
        kept: list[SummaryTrial] = []
        for start in range(0, len(valued), size):
            by_state: dict[str, list[SummaryTrial]] = defaultdict(list)
            for trial in valued[start : start + size]:
                by_state[trial.state].append(trial)
            for group in by_state.values():
                low = min(group, key=lambda t: t.objective_value or 0.0)
                high = max(group, key=lambda t: t.objective_value or 0.0)
                kept.extend({low.number: low, high.number: high}.values())
        valued = sorted(kept, key=lambda t: t.number)
    return {
        "number": [t.number for t in valued],
        "value": [t.objective_value for t in valued],
        "state": [t.state for t in valued],
    }


def best_so_far(trials: Sequence[SummaryTrial], maximize: bool) -> dict[str, list[Any]]:
    numbers: list[int] = []
    values: list[float] = []
    completed = sorted(
        (t for t in _valued(trials) if t.state == "completed"), key=lambda t: t.number
    )
    for trial in completed:
        value = float(trial.objective_value or 0.0)
        if not values or (value > values[-1] if maximize else value < values[-1]):
            numbers.append(trial.number)
            values.append(value)
    if completed and numbers[-1] != completed[-1].number:
        numbers.append(completed[-1].number)  # the line runs on to the latest trial
        values.append(values[-1])
    return {"number": numbers, "value": values}


def axis(definition: dict[str, Any]) -> Callable[[Any], float | None]:
    """How a parameter's values sit on its axis: categorical -> index of the choice, log
    scales -> log10; None for a value that cannot be placed. Built once per parameter: it runs
    for every trial."""
    if definition.get("type") == "categorical":
        index = {repr(choice): float(i) for i, choice in enumerate(definition.get("choices", []))}
        return lambda value: index.get(repr(value))
    log = bool(definition.get("log"))

    def number(value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if log:
            return math.log10(value) if value > 0 else None
        return float(value)

    return number


def importance(trials: Sequence[SummaryTrial], name: str, definition: dict[str, Any]) -> float:
    """The correlation ratio of the objective on the parameter's bins (categories, or
    IMPORTANCE_BINS quantile bins): between-bin variance over total variance, 0..1."""
    place = axis(definition)
    pairs = [
        (x, float(t.objective_value or 0.0))
        for t in trials
        if (x := place(t.params.get(name))) is not None
    ]
    if len(pairs) < 2:
        return 0.0
    values = [v for _, v in pairs]
    mean = sum(values) / len(values)
    total = sum((v - mean) ** 2 for v in values)
    if total == 0:
        return 0.0
    groups: dict[float, list[float]] = defaultdict(list)
    if definition.get("type") == "categorical":
        for x, v in pairs:
            groups[x].append(v)
    else:
        ordered = sorted(pairs)
        size = math.ceil(len(ordered) / IMPORTANCE_BINS)
        for index, (_, v) in enumerate(ordered):
            groups[float(index // size)].append(v)
    between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values())
    return between / total


def _sample(trials: Sequence[SummaryTrial], size: int, maximize: bool) -> list[SummaryTrial]:
    """Up to `size` trials: the best tenth of them, then a seeded random draw of the rest (the
    same trials on every call for the same study)."""
    if len(trials) <= size:
        return list(trials)
    ranked = sorted(trials, key=lambda t: t.objective_value or 0.0, reverse=maximize)
    best = ranked[: size // 10]
    rest = ranked[size // 10 :]
    drawn = random.Random(len(trials)).sample(rest, size - len(best))
    return sorted([*best, *drawn], key=lambda t: t.number)


def trial_table(trials: Sequence[SummaryTrial], query: TrialTableQuery) -> dict[str, Any]:
    rows = [t for t in trials if not query.states or t.state in query.states]
    if query.param:

        def inside(trial: SummaryTrial) -> bool:
            value = trial.params.get(query.param)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            low_ok = query.param_min is None or value >= query.param_min
            return low_ok and (query.param_max is None or value <= query.param_max)

        rows = [t for t in rows if inside(t)]
    if query.sort == "value":
        with_value = [t for t in rows if t.objective_value is not None]
        without = [t for t in rows if t.objective_value is None]
        with_value.sort(key=lambda t: (t.objective_value, t.number), reverse=query.descending)
        rows = with_value + without
    else:
        rows.sort(key=lambda t: t.number, reverse=query.descending)
    page = rows[query.offset : query.offset + query.page_size]
    return {
        "total": len(rows),
        "rows": [
            {
                "number": t.number,
                "state": t.state,
                "value": t.objective_value,
                "params": t.params,
                "pruned_resource": t.pruned_resource,
                "job_id": t.job_id or "",
                "error": t.error,
            }
            for t in page
        ],
    }


def summarize(
    study: StudyRecord,
    trials: Sequence[SummaryTrial],
    curves_of: Callable[[list[str]], dict[str, list[Point]]],
    query: TrialTableQuery,
    max_points: int = DEFAULT_MAX_POINTS,
) -> dict[str, Any]:
    spec = study.spec
    maximize = spec.maximize
    valued = _valued(trials)
    completed = [t for t in valued if t.state == "completed"]
    best = (
        max(completed, key=lambda t: t.objective_value or 0.0)
        if maximize and completed
        else (min(completed, key=lambda t: t.objective_value or 0.0) if completed else None)
    )
    ranked = sorted(completed, key=lambda t: t.objective_value or 0.0, reverse=maximize)
    pruned = [t for t in trials if t.state == "pruned"]
    shown = ranked[:CURVES_BEST] + _sample(pruned, CURVES_PRUNED, maximize)
    curves = curves_of([t.job_id for t in shown if t.job_id])
    space = {name: param.model_dump() for name, param in spec.search_space.items()}
    sample = _sample(valued, max_points, maximize)
    importances = {name: importance(valued, name, d) for name, d in space.items()}
    total_importance = sum(importances.values()) or 1.0
    counts: dict[str, int] = defaultdict(int)
    pruned_by_rung: dict[str, int] = defaultdict(int)
    for trial in trials:
        counts[trial.state] += 1
        if trial.state == "pruned" and trial.pruned_rung is not None:
            pruned_by_rung[str(trial.pruned_rung)] += 1
    params = []
    axes = []
    axes_of = {name: axis(definition) for name, definition in space.items()}
    for name, definition in space.items():
        place = axes_of[name]
        points = [
            (x, t.objective_value) for t in sample if (x := place(t.params.get(name))) is not None
        ]
        points.sort()
        params.append(
            {
                "name": name,
                "type": definition.get("type"),
                "log": bool(definition.get("log")),
                "choices": definition.get("choices", []),
                "importance": importances[name] / total_importance,
                "x": [x for x, _ in points],
                "value": [v for _, v in points],
            }
        )
        axes.append(
            {
                "name": name,
                "type": definition.get("type"),
                "log": bool(definition.get("log")),
                "low": place(definition.get("min")),
                "high": place(definition.get("max")),
                "choices": definition.get("choices", []),
            }
        )
    parallel_rows = [
        [axes_of[name](t.params.get(name)) for name in space] + [t.objective_value] for t in sample
    ]
    return {
        "study": {
            "id": study.id,
            "name": study.name,
            "state": study.state,
            "objective": spec.objective,
            "direction": "maximize" if maximize else "minimize",
            "algorithm": spec.algorithm,
            "pruner": spec.pruner.kind,
            "created_at": study.created_at.isoformat(),
            "finished_at": study.finished_at.isoformat() if study.finished_at else None,
            "trials": len(trials),
        },
        "counts": dict(counts),
        "best": None
        if best is None
        else {"number": best.number, "value": best.objective_value, "params": best.params},
        "history": downsample_history(trials, max_points),
        "best_so_far": best_so_far(trials, maximize),
        "curves": [
            {
                "number": t.number,
                "state": t.state,
                "resource": [p.step for p in curves.get(t.job_id or "", [])],
                "value": [p.value for p in curves.get(t.job_id or "", [])],
                "pruned_resource": t.pruned_resource,
            }
            for t in shown
        ],
        "pruned_by_rung": dict(pruned_by_rung),
        "params": params,
        "parallel": {"axes": axes, "rows": parallel_rows},
        "table": trial_table(trials, query),
    }
