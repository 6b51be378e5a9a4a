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

import argparse
import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from matrec.common.specs import SpecError, parse_job_spec
from matrec.sdk.active_learning import RetrainResult
from matrec.sdk.client import Client
from matrec.sdk.config import ConfigError, MatrecConfig, load_config
from matrec.sdk.errors import InvalidSpecError, JobFailedError, MatrecError
from matrec.sdk.evaluation import Evaluation
from matrec.sdk.hpo import DEFAULT_HP_SPACE, HPOResult, StudyFailedError
from matrec.sdk.local_cluster import LocalCluster
from matrec.sdk.transfer import TransferResult
from matrec.sdk.types import Agent, Candidate, LabellingBatch

log = logging.getLogger("matrec.sdk.training_api")

STATE_FILE = "training-api.json"
LOCK_FILE = "cluster.lock"
DEFAULT_MAX_TRIALS = 8
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
    }
)


@dataclass(frozen=True)
class TrainingResult:
    """A finished training of the unified API.

    `job_id`, `model_path`, `val_accuracy` and `evaluation` are the final fine-tune's;
    `best_params` the hyperparameters the study chose (None without a study), with
    `hpo_study_id` and `hpo_best_value` (the best trial's objective, validation accuracy);
    `report_path` the HTML report of the final job (`report_json_path` its JSON document,
    `study_report_path` the study's HTML report); `pretrained_path` the weights it started from
    (None: from scratch); `workers_per_host` its ranks and `device` cpu/cuda; `degraded` the
    fallbacks taken, one sentence each; `config` the final job's finetune config; `seconds` the
    whole call's duration. `hpo` holds the study's trials.
    """

    job_id: str
    model_path: str
    val_accuracy: float
    evaluation: Evaluation
    model_type: str
    best_params: dict[str, Any] | None
    hpo_study_id: str | None
    hpo_best_value: float | None
    report_path: str | None
    report_json_path: str | None
    study_report_path: str | None
    pretrained_path: str | None
    workers_per_host: int
    device: str
    degraded: list[str]
    config: dict[str, Any]
    seconds: float
    hpo: HPOResult | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the evaluation as its dict, without the study's trials)."""
        return {
            "job_id": self.job_id,
            "model_path": self.model_path,
            "val_accuracy": self.val_accuracy,
            "macro_f1": self.evaluation.macro_f1,
            "model_type": self.model_type,
            "best_params": self.best_params,
            "hpo_study_id": self.hpo_study_id,
            "hpo_best_value": self.hpo_best_value,
            "report_path": self.report_path,
            "report_json_path": self.report_json_path,
            "study_report_path": self.study_report_path,
            "pretrained_path": self.pretrained_path,
            "workers_per_host": self.workers_per_host,
            "device": self.device,
            "degraded": list(self.degraded),
            "config": dict(self.config),
            "seconds": self.seconds,
            "evaluation": self.evaluation.to_dict(),
        }

    def summary(self) -> str:
        """A few lines for a terminal."""
        start = f"from {self.pretrained_path}" if self.pretrained_path else "from scratch"
        lines = [
            f"job              {self.job_id}",
            f"val accuracy     {self.val_accuracy:.4f} (macro-F1 {self.evaluation.macro_f1:.4f})",
            f"model            {self.model_path}",
            f"model type       {self.model_type}, {self.workers_per_host} worker(s) on "
            f"{self.device}, {start}",
        ]
        if self.best_params is not None:
            params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(self.best_params.items()))
            lines.append(f"best params      {params} (study {self.hpo_study_id})")
        lines.append(f"report           {self.report_path or '-'}")
        if self.study_report_path:
            lines.append(f"study report     {self.study_report_path}")
        for note in self.degraded:
            lines.append(f"degraded         {note}")
        lines.append(f"took             {self.seconds:.1f} s")
        return "\n".join(lines)


@dataclass(frozen=True)
class Capacity:
    """What the connected agents offer: the largest single agent (the most ranks one host can
    run) and the sum over all of them (the most trials at once)."""

    agents: int
    max_cpus: int
    max_gpus: int
    total_cpus: int
    total_gpus: int

    @classmethod
    def of(cls, agents: Sequence[Agent]) -> Capacity:
        connected = [a for a in agents if a.state == "connected"]
        cpus = [int(a.total.cpus) for a in connected]
        gpus = [int(a.total.gpus) for a in connected]
        return cls(len(connected), max(cpus, default=0), max(gpus, default=0), sum(cpus), sum(gpus))


def plan_workers(
    num_workers: int, batch_size: int, capacity: int, unit: str
) -> tuple[int, list[str]]:
    """Ranks for a distributed fine-tune asked for `num_workers` on hosts offering at most
    `capacity` `unit` ("CPU" or "GPU") each: at most that many, and a divisor of batch_size
    (each rank trains on an equal slice). The notes say why fewer were taken."""
    if num_workers <= 1:
        return 1, ["distributed: num_workers is 1, so training runs as one process"]
    notes: list[str] = []
    ranks = num_workers
    if capacity < ranks:
        ranks = max(capacity, 1)
        notes.append(
            f"distributed: {num_workers} workers asked for, but the largest agent offers "
            f"{capacity} {unit}{'s' if capacity != 1 else ''}: {ranks} "
            f"rank{'s' if ranks != 1 else ''}"
        )
    fitting = max(k for k in range(1, ranks + 1) if batch_size % k == 0)
    if fitting < ranks:
        notes.append(
            f"distributed: batch_size {batch_size} does not split into {ranks} equal parts: "
            f"{fitting} rank{'s' if fitting != 1 else ''}"
        )
    return fitting, notes


def horovod_installed() -> bool:
    """Whether Horovod with its torch extension is installed for this Python (the embedded
    agent's workers use it), checked without importing it."""
    spec = importlib.util.find_spec("horovod")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(
        any((Path(location) / "torch").glob("mpi_lib_v2*"))
        for location in spec.submodule_search_locations
    )


class EnhancedTrainingAPI:
    """The seed's unified training interface (see the module's documentation).

    The first nine arguments are the seed's; None takes the value from the configuration
    (`matrec.sdk.config`). `coordinator`, `token`, `database_url`, `device` likewise.
    `pool_path` is the unlabelled images active learning selects from; `feedback_threshold`
    the labels that make `retrain_from_feedback` retrain by default; `timeout` (seconds) bounds
    each wait for a job or study (TimeoutError).
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
    ) -> None:
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
        self._cluster: LocalCluster | None = None
        self._lock: IO[str] | None = None
        self._closed = False
        if self.config.coordinator:
            self.address = self.config.coordinator
            self.client = Client(self.address, token=self.config.token)
            self._where = self.address
        else:
            self._start_embedded()
            assert self._cluster is not None
            self.address = self._cluster.address
            self.client = self._cluster.client()
            self._where = "embedded"

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def embedded(self) -> bool:
        """Whether this API runs its own local cluster (no coordinator configured)."""
        return self._cluster is not None

    def close(self) -> None:
        """Close the connection; stop the embedded cluster (its data stays in base_dir)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(AttributeError):
            self.client.close()
        if self._cluster is not None:
            self._cluster.stop()
            self._cluster = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def __enter__(self) -> EnhancedTrainingAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start_embedded(self) -> None:
        lock = (self.base_dir / LOCK_FILE).open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise MatrecError(
                f"another EnhancedTrainingAPI is using the embedded cluster in {self.base_dir}; "
                "close it, or give this one another base_dir"
            ) from None
        self._lock = lock
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
        cores = os.cpu_count() or 1
        self._cluster = LocalCluster(
            workdir,
            agents=1,
            agent_cpus=float(min(self.config.num_workers, cores)),
            agent_name_prefix="embedded",
            database_url=database_url,
        )
        try:
            self._cluster.start()
        except BaseException:
            self._cluster.stop()
            self._cluster = None
            self.close()
            raise
        log.info("embedded cluster at %s (files in %s)", self._cluster.address, workdir)

    def _degrade(self, notes: list[str], note: str) -> None:
        """Record a fallback in this call's notes; log it the first time this API meets it."""
        if note not in notes:
            notes.append(note)
        if note not in self._reported:
            self._reported.add(note)
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
        on_gpu = self._device(config, capacity, notes) == "cuda"

        ranks = int(config.get("workers_per_host", 1))
        if use_distributed and "workers_per_host" not in finetune:
            ranks, why = plan_workers(
                self.config.num_workers,
                int(config.get("batch_size", 32)),
                capacity.max_gpus if on_gpu else capacity.max_cpus,
                "GPU" if on_gpu else "CPU",
            )
            for note in why:
                self._degrade(notes, note)
            local_auto = self.embedded and config.get("backend", "auto") == "auto"
            if ranks > 1 and local_auto and not horovod_installed():
                self._degrade(
                    notes,
                    "distributed: Horovod is not installed here, so the ranks use "
                    "torch.distributed (gloo on CPUs, nccl on GPUs)",
                )
            config["workers_per_host"] = ranks

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

        resources = self._final_resources(ranks, capacity, on_gpu)
        job = self.client.submit_job(
            {"name": name, "kind": "finetune", "config": config, "resources": resources}
        )
        log.info("training job %s submitted (%s ranks)", job.id, ranks)
        done = self.client.wait(job.id, timeout=self.timeout)
        if done.state != "succeeded":
            raise JobFailedError(done.id, done.state, done.error)
        trained = TransferResult.from_result(done.id, done.result)
        self._remember(last_model_job_id=done.id, dataset_path=config["dataset_path"])

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

    def _device(self, config: dict[str, Any], capacity: Capacity, notes: list[str]) -> str:
        """cpu or cuda, written into the config; a note when a GPU was wanted but none exists."""
        wanted = str(config.get("device") or self.config.device)
        if wanted == "cpu":
            config["device"] = "cpu"
            return "cpu"
        if capacity.max_gpus > 0:
            config["device"] = "cuda"
            return "cuda"
        if wanted == "cuda":
            self._degrade(notes, "device: cuda asked for, but no agent has a GPU: training on CPU")
        else:
            self._degrade(notes, "device: no agent has a GPU: training on CPU")
        config["device"] = "cpu"
        return "cpu"

    def _final_resources(self, ranks: int, capacity: Capacity, on_gpu: bool) -> dict[str, Any]:
        """GPU jobs: one GPU and one CPU per rank. CPU jobs: num_workers CPUs (at most the
        largest agent's), shared by the ranks as torch threads."""
        if on_gpu:
            return {"gpus": ranks, "cpus": float(ranks)}
        cpus = max(ranks, min(self.config.num_workers, max(capacity.max_cpus, 1)))
        return {"cpus": float(cpus)}

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
        study = self.client.create_study(spec)
        log.info("study %s: %d trials, %d at a time", study.id, max_trials, parallel)
        study = self.client.wait_study(study.id, timeout=self.timeout)
        best = study.best
        if best is None or best.objective_value is None:
            raise StudyFailedError(study.id, study.state, study.error)
        return HPOResult(
            study_id=study.id,
            objective=study.objective,
            direction=str(study.spec.get("direction")),
            best_params=_typed_params(best.params, space),
            best_value=best.objective_value,
            best_job_id=best.job_id,
            trials=study.trials,
            study=study,
        )

    def _write_reports(
        self, job_id: str, study_id: str | None, notes: list[str]
    ) -> tuple[str | None, str | None, str | None]:
        """report.html and report.json of the job (and study.html, study.json of the study)
        under base_dir/reports/JOB; a note instead when they cannot be written."""
        from matrec.sdk.reports import (
            export_report,
            export_study_report,
            fetch_report,
            fetch_study_report,
        )

        folder = self.base_dir / "reports" / job_id
        try:
            folder.mkdir(parents=True, exist_ok=True)
            report = fetch_report(self.client, job_id)
            html, document = folder / "report.html", folder / "report.json"
            html.write_bytes(export_report(report, "html"))
            document.write_bytes(export_report(report, "json"))
            study_html: Path | None = None
            if study_id is not None:
                study = fetch_study_report(self.client, study_id)
                study_html = folder / "study.html"
                study_html.write_bytes(export_study_report(study, "html"))
                (folder / "study.json").write_bytes(export_study_report(study, "json"))
        except (OSError, ValueError) as exc:
            self._degrade(notes, f"report: not written to {folder} ({exc})")
            return None, None, None
        return str(html), str(document), None if study_html is None else str(study_html)

    # ---- active learning ------------------------------------------------------------------

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
        project_id = self._project(pool_path)
        project = self.client.get_learning_project(project_id)
        if project.pool_scoring_job_id:
            self.client.wait(project.pool_scoring_job_id, timeout=self.timeout)
        return self.client.select_samples(
            project_id, count, strategy, class_balance=class_balance, seed=seed
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
        candidate, _ = self.client.record_feedback(
            batch_id, sample_id, correct_material_id, overwrite=overwrite, add_class=add_class
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
        project = self.client.get_learning_project(project_id)
        if model_type is not None and project.versions:
            first = self.client.get_job(project.versions[0].job_id)
            actual = first.spec.config.get("model_type", "cnn")
            if actual != model_type:
                raise ValueError(
                    f"model_type {model_type!r}: this project's models are {actual!r}; train "
                    "a model of that type with train_model to start a project for it"
                )
        threshold = self.feedback_threshold if feedback_threshold is None else feedback_threshold
        if project.pending_feedback < max(1, threshold):
            return None
        job_id, version = self.client.retrain(project_id)
        if not wait:
            return RetrainResult(job_id, version, None, "", "")
        done = self.client.wait(job_id, timeout=self.timeout)
        if done.state != "succeeded":
            raise JobFailedError(done.id, done.state, done.error)
        accuracy = self._version_accuracy(project_id, version)
        model_path = str((done.result or {}).get("model_path", ""))
        return RetrainResult(job_id, version, accuracy, model_path, "")

    def _require_active_learning(self) -> None:
        if not self.config.enable_active_learning:
            raise MatrecError(
                "active learning is off (enable_active_learning=False, or "
                "ENABLE_ACTIVE_LEARNING=false); turn it on to select samples and retrain"
            )

    def _project(self, pool_path: str | Path | None) -> str:
        """The project of the latest trained model, created on first use."""
        self._require_active_learning()
        state = self._state()
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
        self._remember(project_id=project.id, project_model_job_id=model_job_id, pool_path=pool)
        log.info("active-learning project %s on %s", project.id, pool)
        return project.id

    def _project_id(self) -> str | None:
        state = self._state()
        if state.get("project_model_job_id") != state.get("last_model_job_id"):
            return None
        project_id = state.get("project_id")
        return str(project_id) if project_id else None

    def _version_accuracy(
        self, project_id: str, version: int, timeout: float = 30.0
    ) -> float | None:
        """A version's validation accuracy once the coordinator has recorded it."""
        deadline = time.monotonic() + timeout
        while True:
            project = self.client.get_learning_project(project_id)
            found = next((v for v in project.versions if v.version == version), None)
            if found is not None and found.val_accuracy is not None:
                return found.val_accuracy
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)

    # ---- what this API remembers in base_dir (per coordinator) ---------------------------

    def _state(self) -> dict[str, Any]:
        path = self.base_dir / STATE_FILE
        try:
            everything = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise MatrecError(f"{path} is not a training-API state file; remove it") from None
        state = everything.get(self._where, {}) if isinstance(everything, dict) else {}
        return dict(state) if isinstance(state, dict) else {}

    def _remember(self, **values: Any) -> None:
        path = self.base_dir / STATE_FILE
        try:
            everything = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            everything = {}
        if not isinstance(everything, dict):
            everything = {}
        everything[self._where] = {**self._state(), **values}
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(everything, indent=2) + "\n")
        temporary.replace(path)


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
    supabase_key, database_url, visualization_level, device, timeout) and train_model's
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


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _validate(config: Mapping[str, Any], name: str) -> None:
    try:
        parse_job_spec({"name": name, "kind": "finetune", "config": dict(config)})
    except SpecError as exc:
        raise InvalidSpecError(exc.field, exc.message) from None


def _typed_params(
    params: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The best trial's parameters with ints as ints (a protobuf Struct sends every number as
    a float)."""
    typed: dict[str, Any] = {}
    for key, value in params.items():
        if space.get(key, {}).get("type") == "int" and isinstance(value, float):
            typed[key] = round(value)
        else:
            typed[key] = value
    return typed


# ---- python -m matrec.sdk.training_api ----------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m matrec.sdk.training_api",
        description="Train a material-recognition model with transfer learning, "
        "hyperparameter optimisation and distributed training (the seed's unified API). "
        "Flags left out take their value from the environment, then the config file.",
    )
    parser.add_argument("--dataset", required=True, help="ImageFolder dataset root")
    parser.add_argument("--model-type", choices=("cnn", "hybrid"), default="hybrid")
    toggles = (
        ("--use-distributed", "train with --num-workers ranks"),
        ("--optimize-hyperparams", "search hyperparameters first"),
        ("--use-transfer-learning", "start from --pretrained-path (else from scratch)"),
    )
    for flag, text in toggles:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
    parser.add_argument("--num-workers", type=int, help="worker processes (ranks, trials)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-trials", type=int, default=DEFAULT_MAX_TRIALS)
    parser.add_argument("--hpo-epochs", type=int, help="epochs of each trial (default --epochs)")
    parser.add_argument("--model", help="backbone, e.g. resnet18 (the default) or resnet50")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--pretrained-path", help="local weights to start from")
    parser.add_argument("--base-dir", help="embedded cluster and reports (MATREC_BASE_DIR)")
    parser.add_argument("--coordinator", help="HOST:PORT; default: an embedded cluster")
    parser.add_argument(
        "--visualization-level", choices=("minimal", "standard", "detailed"), default=None
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other finetune config field (VALUE as JSON, else a string); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


@dataclass(frozen=True)
class TrainingRequest:
    """A training as the command lines ask for it (`python -m matrec.sdk.training_api` and
    `matrec-ctl train` build one from their flags); None means "not given": the configuration's
    value (`matrec.sdk.config`), else train_model's default. `settings` are ``KEY=VALUE`` items
    for any other finetune config field (VALUE as JSON, else a string)."""

    dataset: str
    model_type: str = "hybrid"
    use_distributed: bool | None = None
    optimize_hyperparams: bool | None = None
    use_transfer_learning: bool | None = None
    num_workers: int | None = None
    epochs: int = 10
    max_trials: int = DEFAULT_MAX_TRIALS
    hpo_epochs: int | None = None
    model: str | None = None
    image_size: int | None = None
    batch_size: int | None = None
    pretrained_path: str | None = None
    base_dir: str | None = None
    coordinator: str | None = None
    visualization_level: str | None = None
    device: str | None = None
    settings: tuple[str, ...] = ()

    def finetune_config(self) -> dict[str, Any]:
        """The finetune config fields this request fixes: `settings`, then model, image_size
        and batch_size. Raises ValueError naming a ``--set`` item that is not KEY=VALUE."""
        finetune: dict[str, Any] = {}
        for item in self.settings:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--set {item!r}: expected KEY=VALUE")
            try:
                finetune[key] = json.loads(raw)
            except ValueError:
                finetune[key] = raw
        for key, value in (
            ("model", self.model),
            ("image_size", self.image_size),
            ("batch_size", self.batch_size),
        ):
            if value is not None:
                finetune[key] = value
        return finetune


def run_training(request: TrainingRequest) -> TrainingResult:
    """Train as `request` asks, with an EnhancedTrainingAPI opened (and closed) for it."""
    finetune = request.finetune_config()
    with EnhancedTrainingAPI(
        base_dir=request.base_dir,
        use_distributed=request.use_distributed,
        enable_transfer_learning=request.use_transfer_learning,
        enable_hyperparameter_optimization=request.optimize_hyperparams,
        visualization_level=request.visualization_level,
        num_workers=request.num_workers,
        coordinator=request.coordinator,
        device=request.device,
    ) as api:
        return api.train_model(
            request.dataset,
            request.model_type,
            request.epochs,
            pretrained_path=request.pretrained_path,
            max_trials=request.max_trials,
            hpo_epochs=request.hpo_epochs,
            **finetune,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    request = TrainingRequest(
        **{f.name: getattr(args, f.name) for f in fields(TrainingRequest) if f.name != "settings"},
        settings=tuple(args.settings),
    )
    try:
        request.finetune_config()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_training(request)
    except (MatrecError, ConfigError, ValueError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
