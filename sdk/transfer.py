"""`transfer_learn`: the seed's one-call fine-tune, on a cluster or in this process.

>>> from matrec.sdk import transfer_learn
>>> result = transfer_learn("/data/materials", "/models/textures.pt", model_type="hybrid",
...                         epochs=10, strategy="head_only")
>>> result.val_accuracy, result.evaluation.macro_f1

With a coordinator (the `coordinator` argument, else $MATREC_COORDINATOR) the fine-tune is a
`finetune` job submitted through `Client`; without one it runs here, by calling the agent's
training engine through its one public in-process entry point, `matrec.agent.in_process`
(torch is imported only then). Either way the config is validated first, locally, with the
same rules as the coordinator's.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from matrec.common.specs import (
    FinetuneConfig,
    SpecError,
    check_dataset_path,
    parse_job_spec,
)
from matrec.sdk.errors import (
    CoordinatorUnavailableError,
    InvalidSpecError,
    JobFailedError,
    MatrecError,
)
from matrec.sdk.evaluation import Evaluation, EvaluationMissingError
from matrec.sdk.session import coordinator_address
from matrec.sdk.training_progress import ProgressCallback, ProgressSink

if TYPE_CHECKING:
    from matrec.sdk.client import Client
    from matrec.sdk.types import Job

DEFAULT_JOB_NAME = "transfer-learn"


@dataclass(frozen=True)
class TransferResult:
    """A finished fine-tune. `job_id` is None when it ran in-process; `result` is the raw result
    dict (through a cluster, every number in it is a float)."""

    job_id: str | None
    val_accuracy: float
    evaluation: Evaluation
    model_path: str
    result: dict[str, Any]

    @classmethod
    def from_result(cls, job_id: str | None, result: Mapping[str, Any]) -> TransferResult:
        try:
            evaluation = Evaluation.from_result(result)
            val_accuracy = float(result["val_accuracy"])
            model_path = str(result["model_path"])
        except (EvaluationMissingError, KeyError, TypeError, ValueError) as exc:
            where = f"job {job_id}" if job_id else "the fine-tune"
            raise MatrecError(
                f"{where} succeeded but its result is incomplete ({exc}); "
                "is the agent older than this SDK?"
            ) from None
        return cls(job_id, val_accuracy, evaluation, model_path, dict(result))


@overload
def transfer_learn(
    dataset_path: str | Path,
    pretrained_model_path: str | Path | None = None,
    model_type: str = "cnn",
    epochs: int = 10,
    batch_size: int = 32,
    *,
    coordinator: str | None = None,
    wait: Literal[True] = True,
    timeout: float | None = None,
    progress: ProgressCallback | None = None,
    artifact_dir: str | Path | None = None,
    name: str = DEFAULT_JOB_NAME,
    resources: Mapping[str, Any] | None = None,
    **config: Any,
) -> TransferResult: ...


@overload
def transfer_learn(
    dataset_path: str | Path,
    pretrained_model_path: str | Path | None = None,
    model_type: str = "cnn",
    epochs: int = 10,
    batch_size: int = 32,
    *,
    coordinator: str | None = None,
    wait: Literal[False],
    timeout: float | None = None,
    progress: ProgressCallback | None = None,
    artifact_dir: str | Path | None = None,
    name: str = DEFAULT_JOB_NAME,
    resources: Mapping[str, Any] | None = None,
    **config: Any,
) -> Job: ...


def transfer_learn(
    dataset_path: str | Path,
    pretrained_model_path: str | Path | None = None,
    model_type: str = "cnn",
    epochs: int = 10,
    batch_size: int = 32,
    *,
    coordinator: str | None = None,
    wait: bool = True,
    timeout: float | None = None,
    progress: ProgressCallback | None = None,
    artifact_dir: str | Path | None = None,
    name: str = DEFAULT_JOB_NAME,
    resources: Mapping[str, Any] | None = None,
    **config: Any,
) -> TransferResult | Job:
    """Fine-tune a model on the ImageFolder dataset at `dataset_path`; return its evaluation.

    `pretrained_model_path` is local weights to start from (a matrec model or checkpoint, or a
    torchvision state_dict); `model_type` is "cnn" or "hybrid". Every other finetune setting
    (model, strategy, augmentation, learning_rate, ...) goes in `config` under its spec name.

    On a cluster (`coordinator`, else $MATREC_COORDINATOR): submits a finetune job (`name`,
    `resources` as in a job spec); with `wait` blocks until it ends and returns its
    TransferResult, raising JobFailedError with the job's error if it failed; without `wait`
    returns the queued Job at once. Paths are made absolute; they must exist on the agents.

    In-process (no coordinator): trains here, writing checkpoints and model.pt under
    `artifact_dir` (default: a new temporary directory that is kept, since the model lives
    there). Raises JobFailedError if training fails.

    `progress(step, values)` receives every metrics report while waiting; when it is None and
    stdout is a terminal a progress bar is drawn instead. `timeout` (seconds) raises
    TimeoutError: on a cluster the job keeps running, in-process training stops after saving a
    checkpoint in `artifact_dir`. Raises InvalidSpecError (naming the field) before any work
    when the config is invalid.
    """
    address = coordinator_address(coordinator)
    raw_config: dict[str, Any] = {
        "dataset_path": _absolute(dataset_path),
        "model_type": model_type,
        "epochs": epochs,
        "batch_size": batch_size,
        **config,
    }
    if pretrained_model_path is not None:
        raw_config["pretrained_path"] = _absolute(pretrained_model_path)
    spec: dict[str, Any] = {"name": name, "kind": "finetune", "config": raw_config}
    if resources is not None:
        spec["resources"] = dict(resources)
    try:
        _, finetune_config = parse_job_spec(spec)
    except SpecError as exc:
        raise InvalidSpecError(exc.field, exc.message) from None
    assert isinstance(finetune_config, FinetuneConfig)
    sink = ProgressSink(
        epochs, progress, show_bar=progress is None and sys.stdout.isatty() and wait
    )

    if address is None:
        if not wait:
            raise ValueError("wait=False needs a coordinator; without one training runs here")
        return _run_here(finetune_config, artifact_dir, sink, timeout)

    from matrec.sdk.session import open_session

    with open_session(address) as session:
        job = session.client.submit_job(spec)
        if not wait:
            return job
        return _wait_for(session.client, job.id, sink, timeout)


def _absolute(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def _wait_for(
    client: Client, job_id: str, sink: ProgressSink, timeout: float | None
) -> TransferResult:
    from matrec.sdk.types import MetricsEvent

    deadline = None if timeout is None else time.monotonic() + timeout
    if sink.active:
        try:
            with sink:
                for event in client.watch(job_id, timeout=timeout):
                    if isinstance(event, MetricsEvent):
                        sink.feed(event.metrics)
        except CoordinatorUnavailableError:
            pass  # the coordinator went away mid-watch: wait() below rides out a restart
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    job = client.wait(job_id, timeout=remaining)
    if job.state != "succeeded":
        raise JobFailedError(job.id, job.state, job.error)
    return TransferResult.from_result(job.id, job.result)


def _run_here(
    config: FinetuneConfig,
    artifact_dir: str | Path | None,
    sink: ProgressSink,
    timeout: float | None,
) -> TransferResult:
    try:
        check_dataset_path(config)
    except SpecError as exc:
        raise InvalidSpecError(exc.field, exc.message) from None
    # The agent package's documented in-process entry point (it imports torch).
    from matrec.agent.in_process import TrainingPreempted, finetune_in_process

    if artifact_dir is None:
        directory = Path(tempfile.mkdtemp(prefix="matrec-transfer-"))
    else:
        directory = Path(artifact_dir).expanduser().resolve()
        directory.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout

    def should_stop() -> bool:
        return deadline is not None and time.monotonic() > deadline

    try:
        with sink:
            finished = finetune_in_process(
                config,
                directory,
                on_metrics=sink.update,
                on_log=logging.getLogger("matrec.sdk.transfer").info,
                should_stop=should_stop,
            )
    except TrainingPreempted as exc:
        raise TimeoutError(
            f"training did not finish within {timeout} s; stopped at step {exc.step} with a "
            f"checkpoint in {directory} (the same call with artifact_dir={str(directory)!r} "
            "resumes it)"
        ) from None
    except (ValueError, RuntimeError, OSError) as exc:
        raise JobFailedError(None, "failed", f"{type(exc).__name__}: {exc}") from exc
    return TransferResult.from_result(None, finished)
