"""Policy: pure values and functions, the rules every other layer applies.

Retry and restart rules (:mod:`~actors.policy.rules`), the failure catalogue
(:mod:`~actors.policy.catalogue`), records and their state machines
(:mod:`~actors.policy.model`), a batch's book (:mod:`~actors.policy.book`), whether a change
by state moved a file (:mod:`~actors.policy.bulk`), refusals
(:mod:`~actors.policy.refusals`), what a result may hold
(:mod:`~actors.policy.results`), a result sealed as a store writes it
(:mod:`~actors.policy.sealed`) and the digest of a batch's files
(:mod:`~actors.policy.contents`).

The rule of this layer: no I/O, no threads, no clock or randomness of its own (they are
passed in), no import of another layer or of a runtime library (pykka, sqlite3, grpc,
pypdf). Values are frozen and validated on construction.
"""

from actors.policy.book import BatchBook, Changes
from actors.policy.bulk import moved_by_state
from actors.policy.catalogue import CATALOGUE, ErrorCode, ErrorSpec, spec_for
from actors.policy.model import (
    BatchEvent,
    BatchRecord,
    BatchState,
    BatchView,
    ExtractionResult,
    FileRecord,
    FileState,
)
from actors.policy.results import ResultLimits, make_storable
from actors.policy.rules import BatchPolicy, FailureThreshold, RestartIntensity, RetryPolicy
from actors.policy.sealed import SealedResult, seal

__all__ = [
    "CATALOGUE",
    "BatchBook",
    "BatchEvent",
    "BatchPolicy",
    "BatchRecord",
    "BatchState",
    "BatchView",
    "Changes",
    "ErrorCode",
    "ErrorSpec",
    "ExtractionResult",
    "FailureThreshold",
    "FileRecord",
    "FileState",
    "RestartIntensity",
    "ResultLimits",
    "RetryPolicy",
    "SealedResult",
    "make_storable",
    "moved_by_state",
    "seal",
    "spec_for",
]
