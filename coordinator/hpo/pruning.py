"""Early stopping of trials: asynchronous successive halving (ASHA) and median stopping.

A trial's curve is its objective as reported so far, as losses (lower is better), one value per
report; the resource of a value is its 1-based position (epochs, for finetune jobs). Pruners
keep no state: each decision is a function of the curves and of how far the trial has already
been judged (`judged`, stored with the trial), so a restarted coordinator decides the same way
and never judges a trial twice at the same rung.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from matrec.common.studies import PrunerSpec


@dataclass(frozen=True)
class Verdict:
    """The outcome of judging one trial: how far it is judged now, and whether to stop it."""

    judged: int
    prune: bool = False
    rung: int = 0
    resource: int = 0
    reason: str = ""


class Pruner(Protocol):
    def judge(
        self,
        number: int,
        curves: Mapping[int, Sequence[float]],
        judged: int,
        final_resource: int | None = None,
    ) -> Verdict:
        """`final_resource`: the resource at which the trial ends anyway (its epochs); a trial
        is never judged there, since stopping it then saves nothing and loses its result."""
        ...


class NoPruner:
    def judge(
        self,
        number: int,
        curves: Mapping[int, Sequence[float]],
        judged: int,
        final_resource: int | None = None,
    ) -> Verdict:
        return Verdict(judged=judged)


class AshaPruner:
    """Rung k sits at resource min_resource * reduction_factor**k. When a trial reaches a rung
    it goes on only if its value there is among the best 1/reduction_factor of all values
    recorded at that rung so far (its own included; while fewer than reduction_factor trials
    have reached the rung, only the best goes on). Decisions are taken once per rung and never
    revisited, which is what makes it asynchronous: no trial waits for others. `judged` is the
    number of rungs a trial has passed."""

    def __init__(self, min_resource: int, reduction_factor: int) -> None:
        self.min_resource = min_resource
        self.reduction_factor = reduction_factor

    def rung_resource(self, rung: int) -> int:
        return int(self.min_resource * self.reduction_factor**rung)

    def judge(
        self,
        number: int,
        curves: Mapping[int, Sequence[float]],
        judged: int,
        final_resource: int | None = None,
    ) -> Verdict:
        curve = curves[number]
        rung = judged
        limit = len(curve) if final_resource is None else min(len(curve), final_resource - 1)
        while (resource := self.rung_resource(rung)) <= limit:
            value = curve[resource - 1]
            recorded = sorted(c[resource - 1] for c in curves.values() if len(c) >= resource)
            cutoff = recorded[max(len(recorded) // self.reduction_factor - 1, 0)]
            if value > cutoff:
                return Verdict(
                    judged=rung,
                    prune=True,
                    rung=rung,
                    resource=resource,
                    reason=(
                        f"pruned by ASHA at rung {rung} (resource {resource}): {value:.6g} is "
                        f"outside the best 1/{self.reduction_factor} of {len(recorded)} "
                        f"(cutoff {cutoff:.6g})"
                    ),
                )
            rung += 1
        return Verdict(judged=rung)


class MedianPruner:
    """From min_resource reports on, a trial stops when its value is worse than the median of
    the values other trials had at the same resource, once at least min_trials others got
    there. `judged` is the last resource at which the trial was compared."""

    def __init__(self, min_resource: int, min_trials: int) -> None:
        self.min_resource = min_resource
        self.min_trials = min_trials

    def judge(
        self,
        number: int,
        curves: Mapping[int, Sequence[float]],
        judged: int,
        final_resource: int | None = None,
    ) -> Verdict:
        curve = curves[number]
        resource = max(judged, self.min_resource - 1)
        limit = len(curve) if final_resource is None else min(len(curve), final_resource - 1)
        while resource < limit:
            resource += 1
            others = [
                c[resource - 1] for n, c in curves.items() if n != number and len(c) >= resource
            ]
            if len(others) < self.min_trials:
                # Compared too early: leave this resource unjudged so a later pass retries it.
                return Verdict(judged=resource - 1)
            median = statistics.median(others)
            value = curve[resource - 1]
            if value > median:
                return Verdict(
                    judged=resource,
                    prune=True,
                    rung=resource,
                    resource=resource,
                    reason=(
                        f"pruned by median stopping at resource {resource}: {value:.6g} is "
                        f"worse than the median {median:.6g} of {len(others)} other trials"
                    ),
                )
        return Verdict(judged=resource)


def build_pruner(spec: PrunerSpec) -> Pruner:
    if spec.kind == "asha":
        return AshaPruner(spec.min_resource, spec.reduction_factor)
    if spec.kind == "median":
        return MedianPruner(spec.min_resource, spec.min_trials)
    return NoPruner()
