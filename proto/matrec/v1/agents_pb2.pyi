import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from matrec.v1 import artifacts_pb2 as _artifacts_pb2
from matrec.v1 import common_pb2 as _common_pb2
from matrec.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_OUTCOME_UNSPECIFIED: _ClassVar[TaskOutcome]
    TASK_OUTCOME_SUCCEEDED: _ClassVar[TaskOutcome]
    TASK_OUTCOME_FAILED: _ClassVar[TaskOutcome]
    TASK_OUTCOME_CANCELLED: _ClassVar[TaskOutcome]
    TASK_OUTCOME_PREEMPTED: _ClassVar[TaskOutcome]
TASK_OUTCOME_UNSPECIFIED: TaskOutcome
TASK_OUTCOME_SUCCEEDED: TaskOutcome
TASK_OUTCOME_FAILED: TaskOutcome
TASK_OUTCOME_CANCELLED: TaskOutcome
TASK_OUTCOME_PREEMPTED: TaskOutcome

class RegisterAgentRequest(_message.Message):
    __slots__ = ("agent_id", "name", "hostname", "resources", "gpus", "version", "allow_scripts")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALLOW_SCRIPTS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    name: str
    hostname: str
    resources: _common_pb2.Resources
    gpus: _containers.RepeatedCompositeFieldContainer[_jobs_pb2.GpuInfo]
    version: str
    allow_scripts: bool
    def __init__(self, agent_id: _Optional[str] = ..., name: _Optional[str] = ..., hostname: _Optional[str] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., gpus: _Optional[_Iterable[_Union[_jobs_pb2.GpuInfo, _Mapping]]] = ..., version: _Optional[str] = ..., allow_scripts: _Optional[bool] = ...) -> None: ...

class RegisterAgentResponse(_message.Message):
    __slots__ = ("agent_id", "heartbeat_interval", "lease_ttl", "artifact_store")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_STORE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    heartbeat_interval: _duration_pb2.Duration
    lease_ttl: _duration_pb2.Duration
    artifact_store: _artifacts_pb2.ArtifactStoreKind
    def __init__(self, agent_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., artifact_store: _Optional[_Union[_artifacts_pb2.ArtifactStoreKind, str]] = ...) -> None: ...

class TaskRef(_message.Message):
    __slots__ = ("task_id", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_id", "running")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    running: _containers.RepeatedCompositeFieldContainer[TaskRef]
    def __init__(self, agent_id: _Optional[str] = ..., running: _Optional[_Iterable[_Union[TaskRef, _Mapping]]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("running", "draining", "usage")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    running: _containers.RepeatedCompositeFieldContainer[TaskRef]
    draining: bool
    usage: _common_pb2.ResourceUsage
    def __init__(self, running: _Optional[_Iterable[_Union[TaskRef, _Mapping]]] = ..., draining: _Optional[bool] = ..., usage: _Optional[_Union[_common_pb2.ResourceUsage, _Mapping]] = ...) -> None: ...

class TaskStarted(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: TaskRef
    def __init__(self, task: _Optional[_Union[TaskRef, _Mapping]] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task", "outcome", "error", "result", "checkpoint_path", "permanent")
    TASK_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PATH_FIELD_NUMBER: _ClassVar[int]
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    task: TaskRef
    outcome: TaskOutcome
    error: str
    result: _struct_pb2.Struct
    checkpoint_path: str
    permanent: bool
    def __init__(self, task: _Optional[_Union[TaskRef, _Mapping]] = ..., outcome: _Optional[_Union[TaskOutcome, str]] = ..., error: _Optional[str] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., checkpoint_path: _Optional[str] = ..., permanent: _Optional[bool] = ...) -> None: ...

class TaskCheckpoint(_message.Message):
    __slots__ = ("task", "path")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    task: TaskRef
    path: str
    def __init__(self, task: _Optional[_Union[TaskRef, _Mapping]] = ..., path: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("seq", "hello", "heartbeat", "task_started", "metrics", "logs", "result", "checkpoint", "gang_rendezvous", "task_file")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TASK_STARTED_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    GANG_RENDEZVOUS_FIELD_NUMBER: _ClassVar[int]
    TASK_FILE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    hello: Hello
    heartbeat: Heartbeat
    task_started: TaskStarted
    metrics: _common_pb2.MetricBatch
    logs: _common_pb2.LogBatch
    result: TaskResult
    checkpoint: TaskCheckpoint
    gang_rendezvous: GangRendezvous
    task_file: TaskFileChunk
    def __init__(self, seq: _Optional[int] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., task_started: _Optional[_Union[TaskStarted, _Mapping]] = ..., metrics: _Optional[_Union[_common_pb2.MetricBatch, _Mapping]] = ..., logs: _Optional[_Union[_common_pb2.LogBatch, _Mapping]] = ..., result: _Optional[_Union[TaskResult, _Mapping]] = ..., checkpoint: _Optional[_Union[TaskCheckpoint, _Mapping]] = ..., gang_rendezvous: _Optional[_Union[GangRendezvous, _Mapping]] = ..., task_file: _Optional[_Union[TaskFileChunk, _Mapping]] = ...) -> None: ...

class TaskFileChunk(_message.Message):
    __slots__ = ("task", "name", "offset", "data", "last", "size", "sha256")
    TASK_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    task: TaskRef
    name: str
    offset: int
    data: bytes
    last: bool
    size: int
    sha256: str
    def __init__(self, task: _Optional[_Union[TaskRef, _Mapping]] = ..., name: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class GangRendezvous(_message.Message):
    __slots__ = ("task", "gang_id", "backend", "address", "port")
    TASK_FIELD_NUMBER: _ClassVar[int]
    GANG_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    task: TaskRef
    gang_id: str
    backend: str
    address: str
    port: int
    def __init__(self, task: _Optional[_Union[TaskRef, _Mapping]] = ..., gang_id: _Optional[str] = ..., backend: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("task", "job_id", "kind", "config", "resources", "artifact_dir", "resume_from", "lease_expires_at", "gang")
    TASK_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_DIR_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    GANG_FIELD_NUMBER: _ClassVar[int]
    task: TaskRef
    job_id: str
    kind: str
    config: _struct_pb2.Struct
    resources: _common_pb2.Resources
    artifact_dir: str
    resume_from: str
    lease_expires_at: _timestamp_pb2.Timestamp
    gang: Gang
    def __init__(self, task: _Optional[_Union[TaskRef, _Mapping]] = ..., job_id: _Optional[str] = ..., kind: _Optional[str] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., artifact_dir: _Optional[str] = ..., resume_from: _Optional[str] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., gang: _Optional[_Union[Gang, _Mapping]] = ...) -> None: ...

class Gang(_message.Message):
    __slots__ = ("id", "member", "size")
    ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    id: str
    member: int
    size: int
    def __init__(self, id: _Optional[str] = ..., member: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class CancelTask(_message.Message):
    __slots__ = ("task", "reason", "requeue")
    TASK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEUE_FIELD_NUMBER: _ClassVar[int]
    task: TaskRef
    reason: str
    requeue: bool
    def __init__(self, task: _Optional[_Union[TaskRef, _Mapping]] = ..., reason: _Optional[str] = ..., requeue: _Optional[bool] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("assignment", "cancel", "ack", "gang_rendezvous")
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    GANG_RENDEZVOUS_FIELD_NUMBER: _ClassVar[int]
    assignment: Assignment
    cancel: CancelTask
    ack: Ack
    gang_rendezvous: GangRendezvous
    def __init__(self, assignment: _Optional[_Union[Assignment, _Mapping]] = ..., cancel: _Optional[_Union[CancelTask, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., gang_rendezvous: _Optional[_Union[GangRendezvous, _Mapping]] = ...) -> None: ...
