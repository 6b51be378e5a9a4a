"""A finished study of many trials written straight into a coordinator's database before it
starts (test and benchmark seeding: running 10,000 trials is not an option): the study, one
finished job per trial and each trial's objective per epoch in the job's progress, as the study
driver and the agents would have stored them. Parameters and objectives are drawn here."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from matrec.common.studies import parse_study_spec
from matrec.coordinator import schema
from matrec.coordinator.hpo.study_store import StudyStore
from matrec.coordinator.rows import utcnow
from matrec.coordinator.store import Store

OBJECTIVE = "val/accuracy"
SEARCH_SPACE = {
    "learning_rate": {"type": "float", "min": 1e-4, "max": 1e-1, "log": True},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32, 64]},
    "epochs": {"type": "int", "min": 1, "max": 8},
}


@dataclass(frozen=True)
class SeededTrial:
    number: int
    state: str
    params: dict[str, object]
    objective_value: float | None
    pruned_resource: int | None


@dataclass(frozen=True)
class SeededStudy:
    id: str
    trials: list[SeededTrial]


def _objective(params: dict[str, object], epoch: int, rng: random.Random) -> float:
    """A made-up response surface: best near lr 0.01, better with epochs, noisy."""
    lr = float(params["learning_rate"])  # type: ignore[arg-type]
    closeness = math.exp(-((math.log10(lr) + 2.0) ** 2))
    return min(1.0, 0.3 + 0.5 * closeness * (1 - 0.5**epoch) + rng.gauss(0, 0.03))


def seed_study(
    database_url: str, trials: int, artifact_root: Path, *, epochs: int = 4, seed: int = 5
) -> SeededStudy:
    rng = random.Random(seed)
    store = Store.open(database_url)
    try:
        spec = parse_study_spec(
            {
                "name": f"seeded study of {trials} trials",
                "trial": {"kind": "finetune", "config": {"dataset_path": str(artifact_root)}},
                "search_space": SEARCH_SPACE,
                "algorithm": "random",
                "objective": OBJECTIVE,
                "direction": "maximize",
                "max_trials": min(trials, 10_000),
                "pruner": {"kind": "asha", "min_resource": 1, "reduction_factor": 2},
            }
        )
        study = StudyStore(store.engine).create_study(spec)
        start = utcnow() - timedelta(days=1)
        jobs: list[dict[str, object]] = []
        rows: list[dict[str, object]] = []
        progress: list[dict[str, object]] = []
        seeded: list[SeededTrial] = []
        for number in range(trials):
            params: dict[str, object] = {
                "learning_rate": 10 ** rng.uniform(-4, -1),
                "batch_size": rng.choice([8, 16, 32, 64]),
                "epochs": rng.randint(1, 8),
            }
            pruned = rng.random() < 0.4
            stop = rng.randint(1, epochs - 1) if pruned else epochs
            curve = [_objective(params, epoch, rng) for epoch in range(1, stop + 1)]
            job_id = f"job-seed{number:06d}"
            created = start + timedelta(seconds=number)
            state = "pruned" if pruned else "completed"
            jobs.append(
                {
                    "id": job_id, "name": f"trial {number}", "kind": "finetune",
                    "spec": {"config": {}}, "state": "cancelled" if pruned else "succeeded",
                    "max_attempts": 1, "created_at": created, "started_at": created,
                    "finished_at": created + timedelta(seconds=30), "owner": "local",
                }
            )  # fmt: skip
            rows.append(
                {
                    "id": f"{study.id}-{number}", "study_id": study.id, "number": number,
                    "job_id": job_id, "params": params, "state": state,
                    "objective_value": curve[-1], "created_at": created,
                    "finished_at": created + timedelta(seconds=30),
                    "pruned_rung": stop - 1 if pruned else None,
                    "pruned_resource": stop if pruned else None,
                }
            )  # fmt: skip
            for epoch, value in enumerate(curve, 1):
                progress.append(
                    {
                        "job_id": job_id, "task_id": f"{job_id}-t0", "attempt": 1,
                        "step": epoch, "key": OBJECTIVE, "value": value, "time": created,
                    }
                )  # fmt: skip
            seeded.append(SeededTrial(number, state, params, curve[-1], stop if pruned else None))
        with store.engine.begin() as conn:
            conn.execute(schema.training_jobs.insert(), jobs)
            conn.execute(schema.trials.insert(), rows)
            conn.execute(schema.training_progress.insert(), progress)
            conn.execute(
                sa.update(schema.studies)
                .where(schema.studies.c.id == study.id)
                .values(state="completed", finished_at=utcnow())
            )
        return SeededStudy(study.id, seeded)
    finally:
        store.close()
