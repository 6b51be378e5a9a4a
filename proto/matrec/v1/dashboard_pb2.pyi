import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from matrec.v1 import common_pb2 as _common_pb2
from matrec.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobSortKey(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_SORT_KEY_UNSPECIFIED: _ClassVar[JobSortKey]
    JOB_SORT_KEY_CREATED_AT: _ClassVar[JobSortKey]
    JOB_SORT_KEY_NAME: _ClassVar[JobSortKey]
    JOB_SORT_KEY_KIND: _ClassVar[JobSortKey]
    JOB_SORT_KEY_STATE: _ClassVar[JobSortKey]
    JOB_SORT_KEY_FINISHED_AT: _ClassVar[JobSortKey]
    JOB_SORT_KEY_VAL_ACCURACY: _ClassVar[JobSortKey]
JOB_SORT_KEY_UNSPECIFIED: JobSortKey
JOB_SORT_KEY_CREATED_AT: JobSortKey
JOB_SORT_KEY_NAME: JobSortKey
JOB_SORT_KEY_KIND: JobSortKey
JOB_SORT_KEY_STATE: JobSortKey
JOB_SORT_KEY_FINISHED_AT: JobSortKey
JOB_SORT_KEY_VAL_ACCURACY: JobSortKey

class QueryJobsRequest(_message.Message):
    __slots__ = ("states", "kind", "name_contains", "created_after", "created_before", "labels", "sort", "descending", "offset", "page_size")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_CONTAINS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    DESCENDING_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[_common_pb2.JobState]
    kind: str
    name_contains: str
    created_after: _timestamp_pb2.Timestamp
    created_before: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    sort: JobSortKey
    descending: bool
    offset: int
    page_size: int
    def __init__(self, states: _Optional[_Iterable[_Union[_common_pb2.JobState, str]]] = ..., kind: _Optional[str] = ..., name_contains: _Optional[str] = ..., created_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., sort: _Optional[_Union[JobSortKey, str]] = ..., descending: _Optional[bool] = ..., offset: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class QueryJobsResponse(_message.Message):
    __slots__ = ("jobs", "total")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_jobs_pb2.Job]
    total: int
    def __init__(self, jobs: _Optional[_Iterable[_Union[_jobs_pb2.Job, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WhoAmIResponse(_message.Message):
    __slots__ = ("name", "role", "auth_enabled")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    AUTH_ENABLED_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    auth_enabled: bool
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., auth_enabled: _Optional[bool] = ...) -> None: ...

class GetStudySummaryRequest(_message.Message):
    __slots__ = ("study_id", "max_points", "trial_states", "param", "param_min", "param_max", "sort", "descending", "offset", "page_size")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    TRIAL_STATES_FIELD_NUMBER: _ClassVar[int]
    PARAM_FIELD_NUMBER: _ClassVar[int]
    PARAM_MIN_FIELD_NUMBER: _ClassVar[int]
    PARAM_MAX_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    DESCENDING_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    max_points: int
    trial_states: _containers.RepeatedScalarFieldContainer[str]
    param: str
    param_min: float
    param_max: float
    sort: str
    descending: bool
    offset: int
    page_size: int
    def __init__(self, study_id: _Optional[str] = ..., max_points: _Optional[int] = ..., trial_states: _Optional[_Iterable[str]] = ..., param: _Optional[str] = ..., param_min: _Optional[float] = ..., param_max: _Optional[float] = ..., sort: _Optional[str] = ..., descending: _Optional[bool] = ..., offset: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class GetStudySummaryResponse(_message.Message):
    __slots__ = ("summary_json",)
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    summary_json: str
    def __init__(self, summary_json: _Optional[str] = ...) -> None: ...

class GetSampleImageRequest(_message.Message):
    __slots__ = ("batch_id", "sample_id", "max_side")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_SIDE_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    sample_id: str
    max_side: int
    def __init__(self, batch_id: _Optional[str] = ..., sample_id: _Optional[str] = ..., max_side: _Optional[int] = ...) -> None: ...

class GetSampleImageResponse(_message.Message):
    __slots__ = ("png",)
    PNG_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    def __init__(self, png: _Optional[bytes] = ...) -> None: ...
