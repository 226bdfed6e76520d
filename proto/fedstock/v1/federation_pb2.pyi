from proto.fedstock.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_TRAIN: _ClassVar[TaskKind]
    TASK_KIND_EVALUATE: _ClassVar[TaskKind]
    TASK_KIND_WAIT: _ClassVar[TaskKind]
    TASK_KIND_STOP: _ClassVar[TaskKind]
    TASK_KIND_STATISTICS: _ClassVar[TaskKind]
    TASK_KIND_SECAGG_KEYS: _ClassVar[TaskKind]
    TASK_KIND_SECAGG_SHARES: _ClassVar[TaskKind]
    TASK_KIND_SECAGG_UNMASK: _ClassVar[TaskKind]
    TASK_KIND_ANALYSE: _ClassVar[TaskKind]
    TASK_KIND_HE_DECRYPT: _ClassVar[TaskKind]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_TRAIN: TaskKind
TASK_KIND_EVALUATE: TaskKind
TASK_KIND_WAIT: TaskKind
TASK_KIND_STOP: TaskKind
TASK_KIND_STATISTICS: TaskKind
TASK_KIND_SECAGG_KEYS: TaskKind
TASK_KIND_SECAGG_SHARES: TaskKind
TASK_KIND_SECAGG_UNMASK: TaskKind
TASK_KIND_ANALYSE: TaskKind
TASK_KIND_HE_DECRYPT: TaskKind

class JoinRequest(_message.Message):
    __slots__ = ("province", "rows", "software_version", "protocol_version")
    PROVINCE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    province: str
    rows: int
    software_version: str
    protocol_version: int
    def __init__(self, province: _Optional[str] = ..., rows: _Optional[int] = ..., software_version: _Optional[str] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("session", "server_version", "poll_seconds", "protocol_version")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    session: str
    server_version: str
    poll_seconds: float
    protocol_version: int
    def __init__(self, session: _Optional[str] = ..., server_version: _Optional[str] = ..., poll_seconds: _Optional[float] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConfigValue(_message.Message):
    __slots__ = ("number", "integer", "text", "flag")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    number: float
    integer: int
    text: str
    flag: bool
    def __init__(self, number: _Optional[float] = ..., integer: _Optional[int] = ..., text: _Optional[str] = ..., flag: _Optional[bool] = ...) -> None: ...

class Scaler(_message.Message):
    __slots__ = ("features", "mean", "scale")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedScalarFieldContainer[str]
    mean: _tensor_pb2.Tensor
    scale: _tensor_pb2.Tensor
    def __init__(self, features: _Optional[_Iterable[str]] = ..., mean: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., scale: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "round", "kind", "config", "scaler", "parameters", "deadline_seconds", "reason", "failed", "receipts", "inline_data")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ConfigValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ConfigValue, _Mapping]] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SCALER_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    INLINE_DATA_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    round: int
    kind: TaskKind
    config: _containers.MessageMap[str, ConfigValue]
    scaler: Scaler
    parameters: _tensor_pb2.ParametersHeader
    deadline_seconds: float
    reason: str
    failed: bool
    receipts: _containers.RepeatedCompositeFieldContainer[LedgerReceipt]
    inline_data: bytes
    def __init__(self, task_id: _Optional[str] = ..., round: _Optional[int] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., config: _Optional[_Mapping[str, ConfigValue]] = ..., scaler: _Optional[_Union[Scaler, _Mapping]] = ..., parameters: _Optional[_Union[_tensor_pb2.ParametersHeader, _Mapping]] = ..., deadline_seconds: _Optional[float] = ..., reason: _Optional[str] = ..., failed: _Optional[bool] = ..., receipts: _Optional[_Iterable[_Union[LedgerReceipt, _Mapping]]] = ..., inline_data: _Optional[bytes] = ...) -> None: ...

class LedgerReceipt(_message.Message):
    __slots__ = ("index", "hash", "signature")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    index: int
    hash: str
    signature: str
    def __init__(self, index: _Optional[int] = ..., hash: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class TaskChunk(_message.Message):
    __slots__ = ("task", "data")
    TASK_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    task: Task
    data: bytes
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("task_id", "round", "kind", "num_examples", "metrics", "parameters", "error", "inline_data")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INLINE_DATA_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    round: int
    kind: TaskKind
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    parameters: _tensor_pb2.ParametersHeader
    error: str
    inline_data: bytes
    def __init__(self, task_id: _Optional[str] = ..., round: _Optional[int] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., parameters: _Optional[_Union[_tensor_pb2.ParametersHeader, _Mapping]] = ..., error: _Optional[str] = ..., inline_data: _Optional[bytes] = ...) -> None: ...

class SubmitChunk(_message.Message):
    __slots__ = ("outcome", "data")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    outcome: Outcome
    data: bytes
    def __init__(self, outcome: _Optional[_Union[Outcome, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("accepted", "message")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    message: str
    def __init__(self, accepted: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class SessionOpen(_message.Message):
    __slots__ = ("protocol_version",)
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    def __init__(self, protocol_version: _Optional[int] = ...) -> None: ...

class SessionOpened(_message.Message):
    __slots__ = ("protocol_version", "heartbeat_seconds")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    heartbeat_seconds: float
    def __init__(self, protocol_version: _Optional[int] = ..., heartbeat_seconds: _Optional[float] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SessionUp(_message.Message):
    __slots__ = ("open", "next", "outcome", "data", "heartbeat")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    open: SessionOpen
    next: TaskRequest
    outcome: Outcome
    data: bytes
    heartbeat: Heartbeat
    def __init__(self, open: _Optional[_Union[SessionOpen, _Mapping]] = ..., next: _Optional[_Union[TaskRequest, _Mapping]] = ..., outcome: _Optional[_Union[Outcome, _Mapping]] = ..., data: _Optional[bytes] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class SessionDown(_message.Message):
    __slots__ = ("opened", "task", "data", "reply")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    opened: SessionOpened
    task: Task
    data: bytes
    reply: SubmitReply
    def __init__(self, opened: _Optional[_Union[SessionOpened, _Mapping]] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., data: _Optional[bytes] = ..., reply: _Optional[_Union[SubmitReply, _Mapping]] = ...) -> None: ...
