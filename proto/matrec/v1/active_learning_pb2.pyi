import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BatchState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_STATE_UNSPECIFIED: _ClassVar[BatchState]
    BATCH_STATE_OPEN: _ClassVar[BatchState]
    BATCH_STATE_PARTIALLY_LABELLED: _ClassVar[BatchState]
    BATCH_STATE_DONE: _ClassVar[BatchState]
BATCH_STATE_UNSPECIFIED: BatchState
BATCH_STATE_OPEN: BatchState
BATCH_STATE_PARTIALLY_LABELLED: BatchState
BATCH_STATE_DONE: BatchState

class Candidate(_message.Message):
    __slots__ = ("sample_id", "sample_uri", "score", "scores", "predicted_class", "label", "labelled_at", "labelled_by")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_URI_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABELLED_AT_FIELD_NUMBER: _ClassVar[int]
    LABELLED_BY_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    sample_uri: str
    score: float
    scores: _containers.ScalarMap[str, float]
    predicted_class: str
    label: str
    labelled_at: _timestamp_pb2.Timestamp
    labelled_by: str
    def __init__(self, sample_id: _Optional[str] = ..., sample_uri: _Optional[str] = ..., score: _Optional[float] = ..., scores: _Optional[_Mapping[str, float]] = ..., predicted_class: _Optional[str] = ..., label: _Optional[str] = ..., labelled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labelled_by: _Optional[str] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("id", "project_id", "strategy", "state", "scoring_job_id", "created_at", "closed_at", "candidates", "labelled", "size", "created_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SCORING_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    project_id: str
    strategy: str
    state: BatchState
    scoring_job_id: str
    created_at: _timestamp_pb2.Timestamp
    closed_at: _timestamp_pb2.Timestamp
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    labelled: int
    size: int
    created_by: str
    def __init__(self, id: _Optional[str] = ..., project_id: _Optional[str] = ..., strategy: _Optional[str] = ..., state: _Optional[_Union[BatchState, str]] = ..., scoring_job_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., closed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., labelled: _Optional[int] = ..., size: _Optional[int] = ..., created_by: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "job_id", "val_accuracy", "trigger_id", "created_at", "feedback_samples", "state")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    version: int
    job_id: str
    val_accuracy: float
    trigger_id: str
    created_at: _timestamp_pb2.Timestamp
    feedback_samples: int
    state: str
    def __init__(self, version: _Optional[int] = ..., job_id: _Optional[str] = ..., val_accuracy: _Optional[float] = ..., trigger_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., feedback_samples: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class Trigger(_message.Message):
    __slots__ = ("id", "project_id", "kind", "state", "fired_at", "details", "job_id", "fired_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FIRED_AT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FIRED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    project_id: str
    kind: str
    state: str
    fired_at: _timestamp_pb2.Timestamp
    details: _struct_pb2.Struct
    job_id: str
    fired_by: str
    def __init__(self, id: _Optional[str] = ..., project_id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., fired_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., job_id: _Optional[str] = ..., fired_by: _Optional[str] = ...) -> None: ...

class Project(_message.Message):
    __slots__ = ("id", "spec", "created_at", "current_version", "versions", "classes", "pending_feedback", "total_feedback", "pool_scoring_job_id", "reference_scoring_job_id", "last_trained_at", "owner")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    PENDING_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    POOL_SCORING_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_SCORING_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_TRAINED_AT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: _struct_pb2.Struct
    created_at: _timestamp_pb2.Timestamp
    current_version: int
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    classes: _containers.RepeatedScalarFieldContainer[str]
    pending_feedback: int
    total_feedback: int
    pool_scoring_job_id: str
    reference_scoring_job_id: str
    last_trained_at: _timestamp_pb2.Timestamp
    owner: str
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., current_version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., classes: _Optional[_Iterable[str]] = ..., pending_feedback: _Optional[int] = ..., total_feedback: _Optional[int] = ..., pool_scoring_job_id: _Optional[str] = ..., reference_scoring_job_id: _Optional[str] = ..., last_trained_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., owner: _Optional[str] = ...) -> None: ...

class CreateProjectRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: _struct_pb2.Struct
    def __init__(self, spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CreateProjectResponse(_message.Message):
    __slots__ = ("project",)
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    project: Project
    def __init__(self, project: _Optional[_Union[Project, _Mapping]] = ...) -> None: ...

class GetProjectRequest(_message.Message):
    __slots__ = ("project_id",)
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    def __init__(self, project_id: _Optional[str] = ...) -> None: ...

class GetProjectResponse(_message.Message):
    __slots__ = ("project",)
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    project: Project
    def __init__(self, project: _Optional[_Union[Project, _Mapping]] = ...) -> None: ...

class ListProjectsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProjectsResponse(_message.Message):
    __slots__ = ("projects",)
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    projects: _containers.RepeatedCompositeFieldContainer[Project]
    def __init__(self, projects: _Optional[_Iterable[_Union[Project, _Mapping]]] = ...) -> None: ...

class ScorePoolRequest(_message.Message):
    __slots__ = ("project_id",)
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    def __init__(self, project_id: _Optional[str] = ...) -> None: ...

class ScorePoolResponse(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class SelectSamplesRequest(_message.Message):
    __slots__ = ("project_id", "count", "strategy", "class_balance", "seed")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    CLASS_BALANCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    count: int
    strategy: str
    class_balance: bool
    seed: int
    def __init__(self, project_id: _Optional[str] = ..., count: _Optional[int] = ..., strategy: _Optional[str] = ..., class_balance: _Optional[bool] = ..., seed: _Optional[int] = ...) -> None: ...

class SelectSamplesResponse(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: Batch
    def __init__(self, batch: _Optional[_Union[Batch, _Mapping]] = ...) -> None: ...

class GetBatchRequest(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class GetBatchResponse(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: Batch
    def __init__(self, batch: _Optional[_Union[Batch, _Mapping]] = ...) -> None: ...

class ListBatchesRequest(_message.Message):
    __slots__ = ("project_id",)
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    def __init__(self, project_id: _Optional[str] = ...) -> None: ...

class ListBatchesResponse(_message.Message):
    __slots__ = ("batches",)
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[Batch]
    def __init__(self, batches: _Optional[_Iterable[_Union[Batch, _Mapping]]] = ...) -> None: ...

class RecordFeedbackRequest(_message.Message):
    __slots__ = ("batch_id", "sample_id", "label", "overwrite", "add_class")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    ADD_CLASS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    sample_id: str
    label: str
    overwrite: bool
    add_class: bool
    def __init__(self, batch_id: _Optional[str] = ..., sample_id: _Optional[str] = ..., label: _Optional[str] = ..., overwrite: _Optional[bool] = ..., add_class: _Optional[bool] = ...) -> None: ...

class RecordFeedbackResponse(_message.Message):
    __slots__ = ("candidate", "changed", "batch_state")
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    BATCH_STATE_FIELD_NUMBER: _ClassVar[int]
    candidate: Candidate
    changed: bool
    batch_state: BatchState
    def __init__(self, candidate: _Optional[_Union[Candidate, _Mapping]] = ..., changed: _Optional[bool] = ..., batch_state: _Optional[_Union[BatchState, str]] = ...) -> None: ...

class CheckTriggersRequest(_message.Message):
    __slots__ = ("project_id",)
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    def __init__(self, project_id: _Optional[str] = ...) -> None: ...

class CheckTriggersResponse(_message.Message):
    __slots__ = ("fired",)
    FIRED_FIELD_NUMBER: _ClassVar[int]
    fired: _containers.RepeatedCompositeFieldContainer[Trigger]
    def __init__(self, fired: _Optional[_Iterable[_Union[Trigger, _Mapping]]] = ...) -> None: ...

class ListTriggersRequest(_message.Message):
    __slots__ = ("project_id",)
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    def __init__(self, project_id: _Optional[str] = ...) -> None: ...

class ListTriggersResponse(_message.Message):
    __slots__ = ("triggers",)
    TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    triggers: _containers.RepeatedCompositeFieldContainer[Trigger]
    def __init__(self, triggers: _Optional[_Iterable[_Union[Trigger, _Mapping]]] = ...) -> None: ...

class RetrainRequest(_message.Message):
    __slots__ = ("project_id", "trigger_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    trigger_id: str
    def __init__(self, project_id: _Optional[str] = ..., trigger_id: _Optional[str] = ...) -> None: ...

class RetrainResponse(_message.Message):
    __slots__ = ("job_id", "version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...
