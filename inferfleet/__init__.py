"""inferfleet: asynchronous batched ONNX inference behind a Celery + Redis queue."""

# Producing and reading jobs
# Errors
from inferfleet.errors import (
    BadArgumentError,
    BrokerError,
    BrokerFullError,
    ConfigurationError,
    ErrorCode,
    InferfleetError,
    InvalidInputError,
    JobIdConflictError,
    QueueFullError,
    ResultTimeoutError,
    StreamInterruptedError,
    UnknownModelError,
)
from inferfleet.producer import AsyncClient, Client, Job

# Results
from inferfleet.schemas import ErrorInfo, JobResult, JobStatus, SampleResult, SampleStatus

# Configuration
from inferfleet.settings import Settings

__all__ = [
    "AsyncClient",
    "BadArgumentError",
    "BrokerError",
    "BrokerFullError",
    "Client",
    "ConfigurationError",
    "ErrorCode",
    "ErrorInfo",
    "InferfleetError",
    "InvalidInputError",
    "Job",
    "JobIdConflictError",
    "JobResult",
    "JobStatus",
    "QueueFullError",
    "ResultTimeoutError",
    "SampleResult",
    "SampleStatus",
    "Settings",
    "StreamInterruptedError",
    "UnknownModelError",
]
