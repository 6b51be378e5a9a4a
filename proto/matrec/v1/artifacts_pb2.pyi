from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArtifactStoreKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_STORE_KIND_UNSPECIFIED: _ClassVar[ArtifactStoreKind]
    ARTIFACT_STORE_KIND_SHARED: _ClassVar[ArtifactStoreKind]
    ARTIFACT_STORE_KIND_COORDINATOR: _ClassVar[ArtifactStoreKind]

class ArtifactKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_KIND_UNSPECIFIED: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_CHECKPOINT: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_MODEL: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_OTHER: _ClassVar[ArtifactKind]
ARTIFACT_STORE_KIND_UNSPECIFIED: ArtifactStoreKind
ARTIFACT_STORE_KIND_SHARED: ArtifactStoreKind
ARTIFACT_STORE_KIND_COORDINATOR: ArtifactStoreKind
ARTIFACT_KIND_UNSPECIFIED: ArtifactKind
ARTIFACT_KIND_CHECKPOINT: ArtifactKind
ARTIFACT_KIND_MODEL: ArtifactKind
ARTIFACT_KIND_OTHER: ArtifactKind

class UploadHeader(_message.Message):
    __slots__ = ("agent_id", "task_id", "attempt", "kind", "name", "total_size", "sha256", "offset")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    task_id: str
    attempt: int
    kind: ArtifactKind
    name: str
    total_size: int
    sha256: str
    offset: int
    def __init__(self, agent_id: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., kind: _Optional[_Union[ArtifactKind, str]] = ..., name: _Optional[str] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class GetUploadOffsetRequest(_message.Message):
    __slots__ = ("header",)
    HEADER_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ...) -> None: ...

class GetUploadOffsetResponse(_message.Message):
    __slots__ = ("upload_id", "offset", "committed_uri")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_URI_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    offset: int
    committed_uri: str
    def __init__(self, upload_id: _Optional[str] = ..., offset: _Optional[int] = ..., committed_uri: _Optional[str] = ...) -> None: ...

class UploadArtifactRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadArtifactResponse(_message.Message):
    __slots__ = ("uri", "size_bytes", "sha256")
    URI_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    uri: str
    size_bytes: int
    sha256: str
    def __init__(self, uri: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...
