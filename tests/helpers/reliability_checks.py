"""The invariants the reliability suite holds the service to after every attack.

Everything here looks at the service from outside: through its gRPC API, its data
directory and its process tree. A :class:`Ledger` remembers what the service
acknowledged; :func:`check_batches` then checks, for every batch acknowledged, that
nothing uploaded was lost, that every file ends terminal, that the counts equal the
files' states, that event sequences only move on, and that what users read is safe.
Each check that holds is counted in :data:`tests.helpers.reliability.REPORT`.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from actors.policy.catalogue import ErrorCode
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from tests.helpers.blob_checks import incoming_blobs
from tests.helpers.reliability import REPORT
from tests.helpers.server_fixtures import upload

# Reads of a batch and its files until both show the same event (it may be running).
_CONSISTENT_READS = 50

__all__ = [
    "CATALOGUE_CODES",
    "TERMINAL_BATCH",
    "TERMINAL_FILE",
    "Ledger",
    "Uploaded",
    "check_batches",
    "check_history_safe",
    "check_no_temp_files",
    "check_safe_text",
    "check_sequences_continue",
    "seeded",
    "server_workers",
]

WAIT = 60.0
TERMINAL_BATCH = frozenset(
    {
        pb.BATCH_STATE_SUCCEEDED,
        pb.BATCH_STATE_PARTIALLY_SUCCEEDED,
        pb.BATCH_STATE_FAILED,
        pb.BATCH_STATE_CANCELLED,
    }
)
TERMINAL_FILE = frozenset({pb.FILE_STATE_SUCCEEDED, pb.FILE_STATE_FAILED, pb.FILE_STATE_CANCELLED})
CATALOGUE_CODES = frozenset(code.value for code in ErrorCode) - {ErrorCode.INTERNAL.value}

# What must never reach a user: a trace, a source line, a path on the server, an address.
_UNSAFE = re.compile(
    r"Traceback|File \"|\.py\b|line \d+, in|(?:^|[\s'\"(=])/[\w.-]+/|0x[0-9a-fA-F]{6,}"
)
_COUNTED = {
    pb.FILE_STATE_PENDING: "pending",
    pb.FILE_STATE_RUNNING: "running",
    pb.FILE_STATE_BACKOFF: "backoff",
    pb.FILE_STATE_SUCCEEDED: "succeeded",
    pb.FILE_STATE_FAILED: "failed",
    pb.FILE_STATE_CANCELLED: "cancelled",
}


def seeded(name: str) -> random.Random:
    """A random generator for one test, seeded from ``PDFBATCH_SEED`` or afresh.

    The seed is printed (pytest shows it with a failure's output), so that a failure
    can be replayed with ``PDFBATCH_SEED=<seed>``.
    """
    seed = int(os.environ.get("PDFBATCH_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"{name}: PDFBATCH_SEED={seed}")
    return random.Random(seed)


@dataclass(frozen=True)
class Uploaded:
    """A file as the client sent it."""

    name: str
    size: int
    sha256: str


@dataclass
class Ledger:
    """What clients sent and what the service acknowledged, to hold it to afterwards.

    Each upload has a display name of its own, so that a batch whose acknowledgement
    was lost (the service died as it answered) can still be recognised: it may exist,
    and if it does it is held to the same rules.

    Attributes:
        sent: Display name to the files, for every upload begun.
        accepted: Batch id to display name, for every upload the service answered.
        sequences: The highest event sequence a client saw, per batch.
    """

    sent: dict[str, list[Uploaded]] = field(default_factory=dict)
    accepted: dict[str, str] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)

    def submit(
        self,
        stub: batch_pb2_grpc.BatchServiceStub,
        name: str,
        files: Sequence[tuple[str, bytes]],
        **spec: object,
    ) -> pb.Batch:
        """Upload ``files`` as the batch ``name``; remember it once the service answered."""
        assert name not in self.sent, f"display names must be unique: {name}"
        self.sent[name] = [
            Uploaded(file, len(data), hashlib.sha256(data).hexdigest()) for file, data in files
        ]
        batch: pb.Batch = stub.SubmitBatch(
            upload(pb.BatchSpec(display_name=name, **spec), files),  # type: ignore[arg-type]
            timeout=WAIT,
        )
        self.accepted[batch.batch_id] = name
        self.saw(batch)
        return batch

    def saw(self, batch: pb.Batch) -> None:
        """Remember the batch's sequence as a client saw it."""
        self.sequences[batch.batch_id] = max(batch.sequence, self.sequences.get(batch.batch_id, 0))


def check_batches(
    stub: batch_pb2_grpc.BatchServiceStub, ledger: Ledger, *, settled: bool = True
) -> dict[str, pb.Batch]:
    """Check every batch the service holds against the ledger; return them by id.

    Every acknowledged batch must be there with the files uploaded; a batch never
    acknowledged may be there only if its upload was sent whole.

    Args:
        stub: A stub of the service.
        ledger: What was sent and acknowledged.
        settled: Whether every batch must be over: terminal, every file terminal.
    """
    listed = _listed(stub)
    missing = set(ledger.accepted) - set(listed)
    assert not missing, f"acknowledged batches lost: {sorted(missing)}"
    unknown = {b: name for b, name in listed.items() if name not in ledger.sent}
    assert not unknown, f"batches nobody sent: {unknown}"
    REPORT.invariant("nothing accepted lost")
    batches = {}
    for batch_id, name in listed.items():
        batch = whole_batch(stub, batch_id)
        kept = [Uploaded(f.name, f.size_bytes, f.sha256) for f in batch.files]
        assert kept == ledger.sent[name], f"{batch_id}: the files are not those uploaded"
        _check_counts(batch)
        seen = ledger.sequences.get(batch_id, 0)
        assert batch.sequence >= seen, f"{batch_id}: sequence back from {seen} to {batch.sequence}"
        ledger.saw(batch)
        if settled:
            _check_settled(batch)
        _check_batch_text(batch)
        batches[batch_id] = batch
    REPORT.invariant("every uploaded file still present", len(batches))
    REPORT.invariant("counts equal file states", len(batches))
    REPORT.invariant("sequences never go back", len(batches))
    REPORT.invariant("user-facing messages safe", len(batches))
    if settled:
        REPORT.invariant("every file terminal", len(batches))
        REPORT.invariant("failures carry a catalogue code", len(batches))
    return batches


def check_sequences_continue(
    stub: batch_pb2_grpc.BatchServiceStub, batch_id: str, after: int, final: int
) -> None:
    """The events after ``after`` replay as ``after + 1 .. final``: no gap, no repeat."""
    request = pb.WatchBatchRequest(batch_id=batch_id, after_sequence=after)
    replayed = [event.sequence for event in stub.WatchBatch(request, timeout=WAIT)]
    assert replayed == list(range(after + 1, final + 1)), (batch_id, after, final, replayed)
    REPORT.invariant("sequences continue without gaps")


def _listed(stub: batch_pb2_grpc.BatchServiceStub) -> dict[str, str]:
    """Every batch the service lists: id to display name."""
    ids: dict[str, str] = {}
    token = ""
    while True:
        page = stub.ListBatches(
            pb.ListBatchesRequest(page_size=100, page_token=token), timeout=WAIT
        )
        ids |= {batch.batch_id: batch.display_name for batch in page.batches}
        token = page.next_page_token
        if not token:
            return ids


def _check_counts(batch: pb.Batch) -> None:
    by_state = Counter(_COUNTED[f.state] for f in batch.files)
    counts = {name: getattr(batch.counts, name) for name in _COUNTED.values()}
    assert counts == {name: by_state[name] for name in _COUNTED.values()}, batch.batch_id


def _check_settled(batch: pb.Batch) -> None:
    assert batch.state in TERMINAL_BATCH, f"{batch.batch_id} is not over: {batch.state}"
    for file in batch.files:
        assert file.state in TERMINAL_FILE, f"{batch.batch_id}/{file.file_id}: {file.state}"
        if file.state == pb.FILE_STATE_FAILED:
            assert file.error.code in CATALOGUE_CODES, (file.name, file.error.code)
        for attempt in file.attempts:
            if attempt.code:
                assert attempt.code in CATALOGUE_CODES, (file.name, attempt.code)


def _check_batch_text(batch: pb.Batch) -> None:
    check_safe_text(batch.reason)
    for file in batch.files:
        check_safe_text(file.error.message)


def check_safe_text(text: str) -> None:
    """``text`` is fit for a user: short, no trace, no path, no address."""
    assert len(text) <= 300, f"a message too long for a user: {text!r}"
    assert not _UNSAFE.search(text), f"a message that leaks internals: {text!r}"


def check_history_safe(stub: batch_pb2_grpc.BatchServiceStub, batch: pb.Batch) -> None:
    """Every reason in every file's history (``GetFileHistory``) is safe to show."""
    for file in batch.files:
        token = ""
        while True:
            history = stub.GetFileHistory(
                pb.GetFileHistoryRequest(
                    batch_id=batch.batch_id, file_id=file.file_id, page_token=token
                ),
                timeout=WAIT,
            )
            for entry in history.entries:
                if entry.HasField("transition"):
                    check_safe_text(entry.transition.reason)
            if not (token := history.next_page_token):
                break
    REPORT.invariant("history reasons safe", len(batch.files))


def server_workers(server_pid: int) -> list[psutil.Process]:
    """The live worker processes of a service: its grandchildren, below the fork server."""
    found = []
    for process in psutil.Process(server_pid).children(recursive=True):
        try:
            if process.ppid() != server_pid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def check_no_temp_files(data_dir: Path, *, stopped: bool) -> None:
    """No worker left a file behind, no upload was left half-written.

    While the service runs, each worker keeps its own (empty) directory under
    ``work``; once it stopped, ``work`` must be empty.
    """
    work = data_dir / "work"
    left = sorted(work.iterdir() if stopped else (p for p in work.rglob("*") if p.is_file()))
    assert left == [], f"worker temp files left behind: {left}"
    incoming = incoming_blobs(data_dir / "blobs")
    assert incoming == [], f"half-written uploads left behind: {incoming}"
    REPORT.invariant("no temp files left")


def whole_batch(stub: batch_pb2_grpc.BatchServiceStub, batch_id: str) -> pb.Batch:
    """The batch with every file, its counts and files read at the same event: the basic
    view, then every ``ListFiles`` page, again until nothing changed in between (no
    reply carries every file of a batch of any size)."""
    for _ in range(_CONSISTENT_READS):
        batch = stub.GetBatch(
            pb.GetBatchRequest(batch_id=batch_id, view=pb.BATCH_VIEW_BASIC), timeout=WAIT
        )
        token, sequences = "", set()
        while True:
            page = stub.ListFiles(
                pb.ListFilesRequest(batch_id=batch_id, page_size=1000, page_token=token),
                timeout=WAIT,
            )
            batch.files.extend(page.files)
            sequences.add(page.sequence)
            if not (token := page.next_page_token):
                break
        if sequences == {batch.sequence}:
            return batch
    raise AssertionError(f"{batch_id} kept changing while it was read")
