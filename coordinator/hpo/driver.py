"""Runs the studies: settles finished trials, prunes, asks for new trials, finishes studies.

One pass over every running study each tick (or sooner when woken). Everything it knows comes
from the database on each pass, so a coordinator restarted mid-study continues it: no trial is
lost (a trial and its job are stored in one transaction) and none is repeated (trial numbers are
unique per study; a number taken by another coordinator is simply skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from pathlib import Path

from matrec.common.specs import parse_job_spec, task_count
from matrec.common.studies import StudySpecModel, final_resource, trial_job_spec
from matrec.coordinator.availability import DATABASE_DOWN_ERRORS
from matrec.coordinator.cancellation import cancel_job
from matrec.coordinator.hpo.pruning import build_pruner
from matrec.coordinator.hpo.search import (
    SearchAlgorithm,
    SpaceExhausted,
    TrialHistory,
    build_algorithm,
)
from matrec.coordinator.hpo.study_store import Point, StudyRecord, StudyStore, TrialRecord
from matrec.coordinator.notifier import JobNotifier
from matrec.coordinator.scheduler import Scheduler
from matrec.coordinator.sessions import AgentSessions
from matrec.coordinator.states import FINAL_JOB_STATES, JobState, StudyState, TrialState
from matrec.coordinator.store import Store

log = logging.getLogger(__name__)

MIN_PASS_SECONDS = 0.2


def objective_of(trial: TrialRecord, curve: list[Point], key: str) -> float | None:
    """A finished trial's objective: the last value it reported, else the job result's value
    under that key (or with '/' written as '_')."""
    if curve:
        return curve[-1].value
    result = trial.job_result or {}
    for name in (key, key.replace("/", "_")):
        value = result.get(name)
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return None


class StudyDriver:
    def __init__(
        self,
        store: Store,
        studies: StudyStore,
        sessions: AgentSessions,
        scheduler: Scheduler,
        notifier: JobNotifier,
        artifact_root: Path,
        *,
        tick: float = 1.0,
    ) -> None:
        self.store = store
        self.studies = studies
        self.sessions = sessions
        self.scheduler = scheduler
        self.notifier = notifier
        self.artifact_root = artifact_root
        self.tick = tick
        self._algorithms: dict[str, SearchAlgorithm] = {}
        self._exhausted: set[str] = set()
        self._wake = asyncio.Event()
        notifier.add_listener(self.wake)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except DATABASE_DOWN_ERRORS as error:
                log.warning("study pass skipped, database unavailable: %s", error)
            except Exception:
                log.exception("study pass failed; retrying on the next tick")
            # Woken by every stored metric batch: at most one pass per MIN_PASS_SECONDS.
            await asyncio.sleep(MIN_PASS_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)
            self._wake.clear()

    async def run_once(self) -> None:
        for study_id in self.studies.running_study_ids():
            await self.advance(study_id)

    async def advance(self, study_id: str) -> None:
        study = self.studies.get_study(study_id)
        if study is None or study.state != StudyState.RUNNING:
            return
        spec = study.spec
        curves = self.studies.objective_curves(
            [t.job_id for t in study.trials if t.job_id], spec.objective
        )
        changed = self._settle(study, curves)
        changed |= self._prune(study, curves)
        if changed:
            study = self.studies.get_study(study_id)
            assert study is not None
        asked = await self._ask(study)
        if changed or asked:
            self.notifier.notify(study_id)
            study = self.studies.get_study(study_id)
            assert study is not None
        self._finish_if_done(study)

    def _loss(self, spec: StudySpecModel, value: float | None) -> float | None:
        if value is None:
            return None
        return -value if spec.maximize else value

    def _settle(self, study: StudyRecord, curves: dict[str, list[Point]]) -> bool:
        """Trials whose job has ended get their outcome; stopped trials whose job still runs
        (a crash between the two steps) get their job cancelled again."""
        changed = False
        key = study.spec.objective
        for trial in study.trials:
            job_over = trial.job_state is None or trial.job_state in FINAL_JOB_STATES
            if trial.state != TrialState.RUNNING:
                if not job_over and not trial.job_cancel_requested and trial.job_id:
                    self._cancel(trial.job_id, f"trial {trial.number} is {trial.state.value}")
                continue
            if not job_over:
                continue
            curve = curves.get(trial.job_id or "", [])
            if trial.job_state == JobState.SUCCEEDED:
                value = objective_of(trial, curve, key)
                if value is None:
                    self.studies.finish_trial(
                        trial.id,
                        TrialState.FAILED,
                        error=f"the trial's job succeeded but never reported {key!r}",
                    )
                else:
                    self.studies.finish_trial(trial.id, TrialState.COMPLETED, objective_value=value)
            elif trial.job_state == JobState.CANCELLED:
                self.studies.finish_trial(
                    trial.id, TrialState.CANCELLED, error=trial.job_error or "job cancelled"
                )
            else:
                self.studies.finish_trial(
                    trial.id, TrialState.FAILED, error=trial.job_error or "job lost"
                )
            log.info("study %s trial %d settled", study.id, trial.number)
            changed = True
        return changed

    def _prune(self, study: StudyRecord, curves: dict[str, list[Point]]) -> bool:
        spec = study.spec
        if spec.pruner.kind == "none":
            return False
        pruner = build_pruner(spec.pruner)
        losses = {
            t.number: [-p.value if spec.maximize else p.value for p in curves.get(t.job_id, [])]
            for t in study.trials
            if t.job_id
        }
        changed = False
        for trial in study.trials:
            if trial.state != TrialState.RUNNING or trial.job_state != JobState.RUNNING:
                continue
            config = {**spec.trial.config, **trial.params}
            verdict = pruner.judge(
                trial.number, losses, trial.judged, final_resource(spec.trial.kind, config)
            )
            if verdict.prune:
                curve = curves.get(trial.job_id or "", [])
                stopped = self.studies.finish_trial(
                    trial.id,
                    TrialState.PRUNED,
                    objective_value=curve[verdict.resource - 1].value if curve else None,
                    error=verdict.reason,
                    pruned_rung=verdict.rung,
                    pruned_resource=verdict.resource,
                )
                if stopped and trial.job_id:
                    log.info("study %s trial %d: %s", study.id, trial.number, verdict.reason)
                    self._cancel(trial.job_id, verdict.reason)
                    changed = True
            elif verdict.judged != trial.judged:
                self.studies.set_judged(trial.id, verdict.judged)
        return changed

    async def _ask(self, study: StudyRecord) -> bool:
        spec = study.spec
        if study.id in self._exhausted:
            return False
        running = sum(1 for t in study.trials if t.state == TrialState.RUNNING)
        number = len(study.trials)
        if running >= spec.max_parallel or number >= spec.max_trials:
            return False
        if study.id not in self._algorithms:
            # Building a hyperopt algorithm imports hyperopt (seconds, once): off the loop.
            self._algorithms[study.id] = await asyncio.to_thread(build_algorithm, spec)
        algorithm: SearchAlgorithm = self._algorithms[study.id]
        history = [self._history(spec, t) for t in study.trials]
        asked = False
        while running < spec.max_parallel and number < spec.max_trials:
            try:
                params = await asyncio.to_thread(algorithm.suggest, number, list(history))
            except SpaceExhausted as exhausted:
                log.info("study %s: %s; no more trials", study.id, exhausted)
                self._exhausted.add(study.id)
                break
            job_spec = trial_job_spec(spec, params)
            job_spec["name"] = f"{study.spec.name or study.id} trial {number}"
            job_spec["labels"] = {**job_spec["labels"], "study": study.id, "trial": str(number)}
            _, trial_config = parse_job_spec(job_spec)
            added = self.studies.add_trial(
                study.id,
                number,
                params,
                None,
                job_spec,
                self.artifact_root,
                num_tasks=task_count(trial_config),
                owner=study.owner,
                owner_token_id=study.owner_token_id,
            )
            if added is None:
                log.info("study %s trial %d was created elsewhere", study.id, number)
                break
            log.info("study %s trial %d queued: %s", study.id, number, params)
            history.append(TrialHistory(number, params, "running"))
            running += 1
            number += 1
            asked = True
        if asked:
            self.scheduler.wake()
        return asked

    def _history(self, spec: StudySpecModel, trial: TrialRecord) -> TrialHistory:
        loss = None
        if trial.state in (TrialState.COMPLETED, TrialState.PRUNED):
            loss = self._loss(spec, trial.objective_value)
        return TrialHistory(
            trial.number, trial.params, trial.state.value, loss, trial.pruned_resource
        )

    def _finish_if_done(self, study: StudyRecord) -> None:
        spec = study.spec
        if any(t.state == TrialState.RUNNING for t in study.trials):
            return
        if len(study.trials) < spec.max_trials and study.id not in self._exhausted:
            return
        completed = [t for t in study.trials if t.state == TrialState.COMPLETED]
        if completed:
            state, error = StudyState.COMPLETED, ""
        else:
            first_error = next((t.error for t in study.trials if t.error), "")
            state = StudyState.FAILED
            error = f"none of the {len(study.trials)} trials completed" + (
                f"; first error: {first_error}" if first_error else ""
            )
        if self.studies.finish_study(study.id, state, error):
            log.info("study %s %s after %d trials", study.id, state.value, len(study.trials))
            self._algorithms.pop(study.id, None)
            self._exhausted.discard(study.id)
            self.notifier.notify(study.id)

    def cancel_study(
        self, study: StudyRecord, reason: str, cancelled_by: str | None = None
    ) -> None:
        """Stop asking and cancel every running trial's job."""
        self.studies.finish_study(study.id, StudyState.CANCELLED, reason, cancelled_by)
        for trial in study.trials:
            if trial.state == TrialState.RUNNING:
                self.studies.finish_trial(trial.id, TrialState.CANCELLED, error=reason)
                if trial.job_id and trial.job_state not in FINAL_JOB_STATES:
                    self._cancel(trial.job_id, reason, cancelled_by)
        self._algorithms.pop(study.id, None)
        self.notifier.notify(study.id)

    def _cancel(self, job_id: str, reason: str, cancelled_by: str | None = None) -> None:
        cancel_job(self.store, self.sessions, self.notifier, job_id, reason, cancelled_by)
