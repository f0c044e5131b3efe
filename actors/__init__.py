"""pdfbatch's supervision runtime: policy, actors and the execution of PDF work.

Layers, each ignorant of the ones above it: policy (``policy``, ``errors``, ``model``,
``book``), orchestration (``supervisor``, ``file_actor``, ``manager``, ``runtime``) and
execution (``worker_pool``, ``extract``, ``store``, ``blobs``).
"""

from actors.blobs import BlobStore
from actors.clock import FakeScheduler, Scheduler, ThreadScheduler
from actors.errors import CATALOGUE, ErrorCode, ErrorSpec, classify
from actors.execution import AttemptJob, Executor
from actors.extract import PdfLimits, extract_pdf
from actors.model import (
    Attempt,
    AttemptOutcome,
    BatchEvent,
    BatchRecord,
    BatchState,
    BatchView,
    ExtractionResult,
    FileRecord,
    FileState,
)
from actors.policy import BatchPolicy, FailureThreshold, RestartIntensity, RetryPolicy
from actors.refusals import Refusal
from actors.retention import RetentionPolicy
from actors.runtime import NewFile, Runtime
from actors.screening import ScreenedExecutor
from actors.sqlite_store import SQLiteStore
from actors.store import MemoryStore, Store
from actors.worker_limits import ProcessLimits
from actors.worker_pool import WorkerPool

__all__ = [
    "CATALOGUE",
    "Attempt",
    "AttemptJob",
    "AttemptOutcome",
    "BatchEvent",
    "BatchPolicy",
    "BatchRecord",
    "BatchState",
    "BatchView",
    "BlobStore",
    "ErrorCode",
    "ErrorSpec",
    "Executor",
    "ExtractionResult",
    "FailureThreshold",
    "FakeScheduler",
    "FileRecord",
    "FileState",
    "MemoryStore",
    "NewFile",
    "PdfLimits",
    "ProcessLimits",
    "Refusal",
    "RestartIntensity",
    "RetentionPolicy",
    "RetryPolicy",
    "Runtime",
    "SQLiteStore",
    "Scheduler",
    "ScreenedExecutor",
    "Store",
    "ThreadScheduler",
    "WorkerPool",
    "classify",
    "extract_pdf",
]
