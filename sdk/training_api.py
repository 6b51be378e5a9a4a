"""The seed's unified training API: one object (and one call) that brings transfer learning,
hyperparameter optimisation, distributed training, reports and active learning together.

>>> from matrec.sdk.training_api import train_with_all_improvements
>>> result = train_with_all_improvements("/data/materials", model_type="hybrid",
...                                      pretrained_path="/models/textures.pt", epochs=10)
>>> result.best_params, result.val_accuracy, result.report_path, result.degraded

>>> with EnhancedTrainingAPI(enable_hyperparameter_optimization=True, num_workers=2) as api:
...     result = api.train_model("/data/materials", epochs=5)
...     batch = api.get_samples_for_labeling(10, pool_path="/data/incoming")
...     for candidate in batch.candidates:
...         api.record_labeling_feedback(candidate.sample_id, "wood", batch.id)
...     api.retrain_from_feedback(feedback_threshold=10)

From the shell, with the seed's flags::

    python -m matrec.sdk.training_api --dataset /data/materials --model-type hybrid \\
        --use-distributed --optimize-hyperparams --use-transfer-learning --num-workers 4

or ``matrec-ctl train`` with the same flags (both build a `TrainingRequest` for `run_training`).

**Where it runs.** Settings come from `matrec.sdk.config` (arguments > environment > config
file > defaults). With a coordinator configured (`coordinator`, $MATREC_COORDINATOR) the jobs run
on that cluster. Without one the API starts an *embedded* cluster under ``base_dir/cluster``: a
coordinator and ONE agent as local processes, the agent offering ``min(num_workers, this
machine's cores)`` CPUs and the GPUs it finds; a distributed fine-tune then runs its ranks on
that one host, and HPO trials (one CPU or GPU each) run side by side on it. The embedded cluster
stops on `close()`; its database (and so its jobs, studies and projects) stays in base_dir for
the next session. One API at a time may use a base_dir's embedded cluster.

**What a training does.** `train_model` (and `train_with_all_improvements`):

1. transfer learning (when enabled): starts from `pretrained_path` (a local matrec model or
   torchvision state_dict) with the ``gradual`` unfreezing strategy unless another is given.
   Weights cannot be downloaded in general (agents may be offline): without a local file the
   model trains from scratch, and says so;
2. hyperparameter optimisation (when enabled): a study (TPE) over a small space
   (`matrec.sdk.hpo.DEFAULT_HP_SPACE`: learning_rate, dropout_rate, dense_units; parameters
   given as arguments are fixed and left out), trials in parallel on the free CPUs/GPUs;
3. the final fine-tune with the best parameters, distributed over `num_workers` ranks when
   enabled and possible (ranks <= the largest agent's GPUs, else CPUs, and dividing batch_size);
4. a report (HTML + JSON; and the study's when there was one) under ``base_dir/reports/JOB``.

**Graceful degradation.** A missing optional part is logged once per API object as a warning
and listed in each result's `degraded`; the job runs with the fallback: no GPU (CPU), Horovod
not built (torch.distributed), too few workers for `num_workers` (fewer ranks), no local
pretrained model (from scratch), no Supabase database (SQLite under base_dir).

**Supabase.** `supabase_url` and `supabase_key` are accepted and kept in the configuration, but
the platform stores through Postgres, not Supabase's hosted REST API (which is not reachable from
here): set `database_url` ($MATREC_DATABASE_URL or $SUPABASE_DB_URL) to the project's Postgres
connection string and the embedded coordinator stores there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from matrec.common.specs import SpecError, parse_job_spec
from matrec.sdk.active_learning import ActiveLearner, RetrainResult
from matrec.sdk.config import MatrecConfig, load_config
from matrec.sdk.errors import InvalidSpecError, JobFailedError, MatrecError
from matrec.sdk.hpo import DEFAULT_HP_SPACE, HPOResult, run_study
from matrec.sdk.session import Session, open_session
from matrec.sdk.training_memory import ApiMemory
from matrec.sdk.training_progress import TrainingProgress, TrainingUpdate
from matrec.sdk.training_request import DEFAULT_MAX_TRIALS, TrainingRequest, run_training
from matrec.sdk.training_result import TrainingResult
from matrec.sdk.transfer import TransferResult
from matrec.sdk.types import Candidate, LabellingBatch
from matrec.sdk.worker_planning import (
    Capacity,
    choose_device,
    final_resources,
    horovod_installed,
    plan_ranks,
    plan_workers,
)

if TYPE_CHECKING:
    import argparse

# Worker planning, the result and the command line's request live in modules of their own;
# their names stay importable from here.
__all__ = [
    "API_ARGUMENTS",
    "DEFAULT_MAX_TRIALS",
    "LOCK_FILE",
    "STATE_FILE",
    "Capacity",
    "EnhancedTrainingAPI",
    "TrainingRequest",
    "TrainingResult",
    "build_parser",
    "horovod_installed",
    "main",
    "plan_workers",
    "run_training",
    "train_with_all_improvements",
]

log = logging.getLogger("matrec.sdk.training_api")

STATE_FILE = "training-api.json"
#: The embedded cluster (base_dir/cluster) is held through this lock file (`open_session`).
LOCK_FILE = "cluster.lock"
#: Settings EnhancedTrainingAPI takes (train_with_all_improvements passes these to it).
API_ARGUMENTS = frozenset(
    {
        "base_dir",
        "supabase_url",
        "supabase_key",
        "visualization_level",
        "coordinator",
        "token",
        "database_url",
        "device",
        "pool_path",
        "feedback_threshold",
        "timeout",
        "progress",
    }
)


class EnhancedTrainingAPI:
    """The seed's unified training interface (see the module's documentation).

    The first nine arguments are the seed's; None takes the value from the configuration
    (`matrec.sdk.config`). `coordinator`, `token`, `database_url`, `device` likewise.
    `pool_path` is the unlabelled images active learning selects from; `feedback_threshold`
    the labels that make `retrain_from_feedback` retrain by default; `timeout` (seconds) bounds
    each wait for a job or study (TimeoutError). `progress` is called with each phase the API
    enters and with each fallback the first time it takes it (a `TrainingUpdate`); without it
    they are logged (logger ``matrec.sdk.training_api``: phases INFO, fallbacks WARNING).
    """

    def __init__(
        self,
        base_dir: str | Path | None = None,
        supabase_url: str | None = None,
        supabase_key: str | None = None,
        use_distributed: bool | None = None,
        enable_transfer_learning: bool | None = None,
        enable_hyperparameter_optimization: bool | None = None,
        enable_active_learning: bool | None = None,
        visualization_level: str | None = None,
        num_workers: int | None = None,
        *,
        coordinator: str | None = None,
        token: str | None = None,
        database_url: str | None = None,
        device: str | None = None,
        pool_path: str | Path | None = None,
        feedback_threshold: int = 50,
        timeout: float | None = None,
        progress: TrainingProgress | None = None,
    ) -> None:
        self._progress = progress
        self.config: MatrecConfig = load_config(
            base_dir=base_dir,
            supabase_url=supabase_url,
            supabase_key=supabase_key,
            use_distributed=use_distributed,
            enable_transfer_learning=enable_transfer_learning,
            enable_hyperparameter_optimization=enable_hyperparameter_optimization,
            enable_active_learning=enable_active_learning,
            visualization_level=visualization_level,
            num_workers=num_workers,
            coordinator=coordinator,
            token=token,
            database_url=database_url,
            device=device,
        )
        if feedback_threshold < 0:
            raise ValueError(f"feedback_threshold must be >= 0, got {feedback_threshold}")
        self.base_dir = self.config.base_dir.expanduser().resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.pool_path = None if pool_path is None else _absolute(pool_path)
        self.feedback_threshold = feedback_threshold
        self.timeout = timeout
        self._reported: set[str] = set()
        #: Fallbacks that hold for every job of this API (the embedded cluster's storage).
        self._standing_notes: list[str] = []
        self._closed = False
        self._session = self._open_session()
        self.client = self._session.client
        self.address = self._session.address
        #: What this API remembers in base_dir, per coordinator ("embedded" for its own).
        self._memory = ApiMemory(
            self.base_dir / STATE_FILE, "embedded" if self._session.embedded else self.address
        )

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def embedded(self) -> bool:
        """Whether this API runs its own local cluster (no coordinator configured)."""
        return self._session.embedded

    def close(self) -> None:
        """Close the connection; stop the embedded cluster (its data stays in base_dir)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(AttributeError):
            self._session.close()

    def __enter__(self) -> EnhancedTrainingAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open_session(self) -> Session:
        """The configured coordinator, else the embedded cluster of base_dir: one agent
        offering min(num_workers, cores) CPUs, storing where database_url says (SQLite in
        base_dir without one, which is a standing note)."""
        if self.config.coordinator:
            return open_session(self.config.coordinator, token=self.config.token)
        database_url = self.config.database_url or ""
        workdir = self.base_dir / "cluster"
        if not database_url:
            where = workdir / "coordinator" / "matrec.db"
            if self.config.supabase_url:
                self._standing_notes.append(
                    "storage: a Supabase URL is configured, but the coordinator stores through "
                    "Postgres, not Supabase's REST API; set MATREC_DATABASE_URL (or "
                    "SUPABASE_DB_URL) to the project's Postgres connection string. Storing in "
                    f"SQLite at {where}"
                )
            else:
                self._standing_notes.append(
                    f"storage: no Supabase database configured; storing in SQLite at {where}"
                )
        session = open_session(
            None,
            workdir,
            agents=1,
            exclusive="EnhancedTrainingAPI",
            agent_cpus=float(min(self.config.num_workers, os.cpu_count() or 1)),
            agent_name_prefix="embedded",
            database_url=database_url,
            owns_jobs=not database_url,
        )
        self._phase(f"embedded cluster at {session.address} (files in {workdir})")
        return session

    def _phase(self, text: str) -> None:
        """Tell `progress` (else the log) what the API does now."""
        if self._progress is not None:
            self._progress(TrainingUpdate("phase", text))
        else:
            log.info("%s", text)

    def _degrade(self, notes: list[str], note: str) -> None:
        """Record a fallback in this call's notes; tell `progress` (else the log) the first
        time this API meets it."""
        if note not in notes:
            notes.append(note)
        if note not in self._reported:
            self._reported.add(note)
            if self._progress is not None:
                self._progress(TrainingUpdate("fallback", note))
            else:
                log.warning("%s", note)

    # ---- training -------------------------------------------------------------------------

    def train_model(
        self,
        dataset_path: str | Path,
        model_type: str = "hybrid",
        epochs: int = 10,
        *,
        use_transfer_learning: bool | None = None,
        optimize_hyperparams: bool | None = None,
        distributed: bool | None = None,
        pretrained_path: str | Path | None = None,
        hp_space: Mapping[str, Mapping[str, Any]] | None = None,
        max_trials: int = DEFAULT_MAX_TRIALS,
        hpo_epochs: int | None = None,
        hpo_algorithm: str = "mtpe",
        dataloader_workers: int | None = None,
        name: str = "training",
        **finetune: Any,
    ) -> TrainingResult:
        """Train a model on the ImageFolder dataset at `dataset_path` with the improvements
        this API has enabled (`use_transfer_learning`, `optimize_hyperparams`, `distributed`
        override them for this call); write its report; return a TrainingResult.

        Any finetune config field (model, batch_size, image_size, learning_rate, strategy, ...)
        goes in `finetune` under its spec name and is fixed (a fixed hyperparameter is left out
        of the search). `pretrained_path` (default: the configured one, with transfer learning
        on) is local weights to start from. The study runs `max_trials` trials of `hpo_epochs`
        epochs (default: `epochs`) each, with `hpo_algorithm` (mtpe, tpe, random, grid, anneal) over
        `hp_space` (default DEFAULT_HP_SPACE). `dataloader_workers` is the finetune config's
        num_workers (DataLoader processes); `num_workers` is this API's worker count.

        Raises InvalidSpecError (naming the field) before anything runs, JobFailedError when
        the final job fails, StudyFailedError when no trial completed, TimeoutError.
        """
        started = time.monotonic()
        if "num_workers" in finetune:
            raise ValueError(
                "num_workers is the API's worker count (EnhancedTrainingAPI(num_workers=...)); "
                "the DataLoader's worker processes are dataloader_workers="
            )
        use_transfer = _choose(use_transfer_learning, self.config.enable_transfer_learning)
        use_hpo = _choose(optimize_hyperparams, self.config.enable_hyperparameter_optimization)
        use_distributed = _choose(distributed, self.config.use_distributed)
        notes = list(self._standing_notes)
        for note in notes:
            self._degrade(notes, note)

        config: dict[str, Any] = {
            "dataset_path": _absolute(dataset_path),
            "model_type": model_type,
            "epochs": epochs,
            "visualization_level": self.config.visualization_level,
            **finetune,
        }
        if dataloader_workers is not None:
            config["num_workers"] = dataloader_workers
        start_from = self._pretrained(pretrained_path, use_transfer, config, notes)
        if start_from is not None:
            config["pretrained_path"] = start_from
            if use_transfer:
                config.setdefault("strategy", "gradual")
        _validate(config, name)

        capacity = Capacity.of(self.client.list_agents())
        if capacity.agents == 0:
            self._degrade(
                notes,
                f"no agent is connected to {self.address} now: planning for "
                f"{self.config.num_workers} CPUs; the jobs wait for an agent",
            )
            capacity = Capacity(0, self.config.num_workers, 0, self.config.num_workers, 0)
        device, why = choose_device(str(config.get("device") or self.config.device), capacity)
        config["device"] = device
        on_gpu = device == "cuda"
        ranks = int(config.get("workers_per_host", 1))
        if use_distributed and "workers_per_host" not in finetune:
            ranks, more = plan_ranks(
                self.config.num_workers,
                config.get("batch_size", 32),
                capacity,
                on_gpu,
                local_auto_backend=self.embedded and config.get("backend", "auto") == "auto",
            )
            why += more
            config["workers_per_host"] = ranks
        for note in why:
            self._degrade(notes, note)

        hpo: HPOResult | None = None
        if use_hpo:
            hpo = self._search(
                config,
                finetune,
                hp_space or DEFAULT_HP_SPACE,
                max_trials=max_trials,
                epochs=hpo_epochs or epochs,
                algorithm=hpo_algorithm,
                capacity=capacity,
                on_gpu=on_gpu,
                name=name,
                notes=notes,
            )
            if hpo is not None:
                config.update(hpo.best_params)

        resources = final_resources(ranks, capacity, on_gpu, self.config.num_workers)
        job = self.client.submit_job(
            {"name": name, "kind": "finetune", "config": config, "resources": resources}
        )
        self._phase(f"training job {job.id} submitted ({ranks} ranks)")
        done = self.client.wait(job.id, timeout=self.timeout)
        if done.state != "succeeded":
            raise JobFailedError(done.id, done.state, done.error)
        trained = TransferResult.from_result(done.id, done.result)
        self._memory.remember(last_model_job_id=done.id, dataset_path=config["dataset_path"])

        html, document, study_html = self._write_reports(
            done.id, hpo.study_id if hpo else None, notes
        )
        return TrainingResult(
            job_id=done.id,
            model_path=trained.model_path,
            val_accuracy=trained.val_accuracy,
            evaluation=trained.evaluation,
            model_type=str(config["model_type"]),
            best_params=dict(hpo.best_params) if hpo else None,
            hpo_study_id=hpo.study_id if hpo else None,
            hpo_best_value=hpo.best_value if hpo else None,
            report_path=html,
            report_json_path=document,
            study_report_path=study_html,
            pretrained_path=config.get("pretrained_path"),
            workers_per_host=int(config.get("workers_per_host", 1)),
            device="cuda" if on_gpu else "cpu",
            degraded=notes,
            config=config,
            seconds=time.monotonic() - started,
            hpo=hpo,
        )

    def _pretrained(
        self,
        pretrained_path: str | Path | None,
        use_transfer: bool,
        config: dict[str, Any],
        notes: list[str],
    ) -> str | None:
        """The local weights to start from: the argument (always), else the configured ones
        when transfer learning is on; a note when transfer learning finds none."""
        if pretrained_path is not None:
            return _absolute(pretrained_path)
        if not use_transfer or config.get("pretrained_weights"):
            return None
        if self.config.pretrained_path is not None:
            return _absolute(self.config.pretrained_path)
        self._degrade(
            notes,
            "transfer learning: no local pretrained model (pass pretrained_path= or set "
            "MATREC_PRETRAINED_PATH); downloading torchvision weights needs internet access on "
            "the agents (pretrained_weights='DEFAULT'), so the model trains from scratch",
        )
        return None

    def _search(
        self,
        config: Mapping[str, Any],
        fixed: Mapping[str, Any],
        hp_space: Mapping[str, Mapping[str, Any]],
        *,
        max_trials: int,
        epochs: int,
        algorithm: str,
        capacity: Capacity,
        on_gpu: bool,
        name: str,
        notes: list[str],
    ) -> HPOResult | None:
        """Run a study of one-rank trials over `hp_space` less the `fixed` parameters; None
        when nothing is left to search."""
        space = {k: dict(v) for k, v in hp_space.items() if k not in fixed}
        if not space:
            self._degrade(
                notes, "hyperparameter optimisation: every parameter of the space is fixed by "
                "an argument, so there is nothing to search",
            )  # fmt: skip
            return None
        trial_config = {k: v for k, v in config.items() if k not in space}
        trial_config.update(epochs=epochs, workers_per_host=1)
        slots = capacity.total_gpus if on_gpu else capacity.total_cpus
        parallel = max(1, min(max_trials, slots, self.config.num_workers))
        spec: dict[str, Any] = {
            "name": f"{name}-hpo",
            "trial": {
                "name": f"{name}-trial",
                "kind": "finetune",
                "config": trial_config,
                "resources": {"gpus": 1, "cpus": 1.0} if on_gpu else {"cpus": 1.0},
            },
            "search_space": space,
            "algorithm": algorithm,
            "objective": "val/accuracy",
            "max_trials": max_trials,
            "max_parallel": parallel,
            "seed": int(config.get("seed", 0)),
        }
        if epochs >= 3:
            spec["pruner"] = {"kind": "asha"}
        self._phase(f"hyperparameter study: {max_trials} trials, {parallel} at a time")
        return run_study(self.client, spec, timeout=self.timeout)

    def _write_reports(
        self, job_id: str, study_id: str | None, notes: list[str]
    ) -> tuple[str | None, str | None, str | None]:
        """report.html and report.json of the job (and study.html, study.json of the study)
        under base_dir/reports/JOB; a note instead when they cannot be written."""
        from matrec.sdk.reports import write_reports

        folder = self.base_dir / "reports" / job_id
        try:
            html, document, study_html = write_reports(self.client, folder, job_id, study_id)
        except (OSError, ValueError) as exc:
            self._degrade(notes, f"report: not written to {folder} ({exc})")
            return None, None, None
        return str(html), str(document), None if study_html is None else str(study_html)

    # ---- active learning (an ActiveLearner on this API's client) ---------------------------

    def get_samples_for_labeling(
        self,
        count: int,
        strategy: str = "",
        *,
        pool_path: str | Path | None = None,
        class_balance: bool = False,
        seed: int = 0,
    ) -> LabellingBatch:
        """A batch of `count` images of the pool worth labelling (`strategy`: least_confidence,
        margin, entropy, bald, coreset, cluster_margin, hybrid, random; "" the project's,
        entropy). The first call starts an active-learning project from the latest model
        train_model trained and `pool_path` (default: the API's); the pool is scored first."""
        learner = self._learner(self._project(pool_path))
        return learner.select_samples_for_labeling(
            count, strategy, class_balance=class_balance, seed=seed
        )

    def record_labeling_feedback(
        self,
        sample_id: str,
        correct_material_id: str,
        batch_id: str,
        *,
        overwrite: bool = False,
        add_class: bool = False,
    ) -> Candidate:
        """Record the correct class of a candidate of `batch_id`; returns the candidate. The
        same label twice is a no-op; another label needs `overwrite`, a class the model does not
        know `add_class` (Client.record_feedback)."""
        self._require_active_learning()
        learner = self._learner(self._project_id() or "")
        candidate, _ = learner.record_feedback(
            sample_id, correct_material_id, batch_id, overwrite=overwrite, add_class=add_class
        )
        return candidate

    def retrain_from_feedback(
        self,
        model_type: str | None = None,
        feedback_threshold: int | None = None,
        *,
        wait: bool = True,
    ) -> RetrainResult | None:
        """Retrain from the project's latest model with every label so far, once at least
        `feedback_threshold` (default: the API's) labels wait; None when fewer do. `model_type`,
        if given, must be the project's. With `wait`, returns when the new version is recorded
        with its validation accuracy."""
        self._require_active_learning()
        project_id = self._project_id()
        if project_id is None:
            raise MatrecError(
                "no active-learning project yet: call get_samples_for_labeling and record "
                "feedback first"
            )
        threshold = self.feedback_threshold if feedback_threshold is None else feedback_threshold
        return self._learner(project_id).retrain_from_feedback(model_type, threshold, wait=wait)

    def _learner(self, project_id: str) -> ActiveLearner:
        return ActiveLearner.for_project(self.client, project_id, timeout=self.timeout)

    def _require_active_learning(self) -> None:
        if not self.config.enable_active_learning:
            raise MatrecError(
                "active learning is off (enable_active_learning=False, or "
                "ENABLE_ACTIVE_LEARNING=false); turn it on to select samples and retrain"
            )

    def _project(self, pool_path: str | Path | None) -> str:
        """The project of the latest trained model, created on first use."""
        self._require_active_learning()
        state = self._memory.read()
        model_job_id = state.get("last_model_job_id")
        if not model_job_id:
            raise MatrecError(
                "no trained model to select samples with: call train_model first (with this "
                "base_dir and coordinator)"
            )
        pool = _absolute(pool_path) if pool_path is not None else self.pool_path
        project_id = state.get("project_id")
        if project_id and state.get("project_model_job_id") == model_job_id:
            if pool is not None and pool != state.get("pool_path"):
                raise ValueError(
                    f"pool_path {pool!r}: this model's project selects from "
                    f"{state.get('pool_path')!r}; a new pool needs a new project "
                    "(train a model, or use ActiveLearner)"
                )
            return str(project_id)
        if pool is None:
            raise ValueError(
                "pool_path is required: the folder (or manifest) of unlabelled images to select "
                "from (EnhancedTrainingAPI(pool_path=...) or get_samples_for_labeling(pool_path=))"
            )
        spec = {
            "name": f"training-api-{model_job_id[:8]}",
            "dataset_path": str(state["dataset_path"]),
            "pool_path": pool,
            "model_job_id": model_job_id,
            "triggers": {"feedback_threshold": self.feedback_threshold},
        }
        project = self.client.create_learning_project(spec)
        self._memory.remember(
            project_id=project.id, project_model_job_id=model_job_id, pool_path=pool
        )
        self._phase(f"active-learning project {project.id} on {pool}")
        return project.id

    def _project_id(self) -> str | None:
        state = self._memory.read()
        if state.get("project_model_job_id") != state.get("last_model_job_id"):
            return None
        project_id = state.get("project_id")
        return str(project_id) if project_id else None


def train_with_all_improvements(
    dataset_path: str | Path,
    model_type: str = "hybrid",
    use_transfer_learning: bool = True,
    optimize_hyperparams: bool = True,
    distributed: bool = True,
    num_workers: int = 4,
    **kwargs: Any,
) -> TrainingResult:
    """The seed's one call: train on `dataset_path` with every improvement asked for, on the
    configured cluster or an embedded one (started and stopped for the call).

    `kwargs` holds EnhancedTrainingAPI settings (base_dir, coordinator, token, supabase_url,
    supabase_key, database_url, visualization_level, device, timeout, progress) and train_model's
    arguments (epochs, pretrained_path, max_trials, hpo_epochs, hp_space, and any finetune
    config field such as model, batch_size or image_size).
    """
    api_arguments = {k: kwargs.pop(k) for k in list(kwargs) if k in API_ARGUMENTS}
    with EnhancedTrainingAPI(
        use_distributed=distributed,
        enable_transfer_learning=use_transfer_learning,
        enable_hyperparameter_optimization=optimize_hyperparams,
        num_workers=num_workers,
        **api_arguments,
    ) as api:
        return api.train_model(dataset_path, model_type, **kwargs)


# ---- helpers ------------------------------------------------------------------------------


def _choose(argument: bool | None, configured: bool) -> bool:
    return configured if argument is None else argument


def _absolute(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def _validate(config: Mapping[str, Any], name: str) -> None:
    try:
        parse_job_spec({"name": name, "kind": "finetune", "config": dict(config)})
    except SpecError as exc:
        raise InvalidSpecError(exc.field, exc.message) from None


# ---- python -m matrec.sdk.training_api ----------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """`matrec-ctl train`'s options as an argparse parser (sdk/ctl/train.py)."""
    from matrec.sdk.ctl.train import build_parser as train_parser

    return train_parser()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m matrec.sdk.training_api`: the seed's invocation of `matrec-ctl train` (one
    command, one parser: sdk/ctl/train.py)."""
    from matrec.sdk.ctl.train import run_seed_command_line

    return run_seed_command_line(argv)


if __name__ == "__main__":
    sys.exit(main())
