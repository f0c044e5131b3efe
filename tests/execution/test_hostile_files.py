"""Hostile files through the runtime, the real extractor and real, fenced worker processes.

Each hostile file must fail with its catalogue code after one attempt, within its
limits, while the innocent files of the same batch succeed. The clock is fake: no
timeout or backoff timer ever fires, so only the file's own limits can end it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pypdf.errors import PdfReadError

from actors.execution.classify import classify, classify_exit
from actors.execution.contract import AttemptFailure
from actors.execution.extract import extract_pdf
from actors.execution.local.limits import ProcessLimits
from actors.execution.local.pool import DEFAULT_PROCESSOR, WorkerPool
from actors.execution.screening import ScreenedExecutor, screen
from actors.orchestration.clock import FakeScheduler
from actors.orchestration.runtime import NewFile, Runtime
from actors.policy.catalogue import ErrorCode
from actors.policy.model import AttemptOutcome, BatchView, FileRecord, FileState
from actors.policy.sealed import unseal
from actors.storage.blobs import BlobStore
from actors.storage.store import MemoryStore
from tests.helpers import hostile_pdfs
from tests.helpers.harness import Harness, Waiter
from tests.helpers.pool_fixtures import PoolFactory, Recorder
from tests.helpers.security_processors import FENCE

CPU_SECONDS = 2
# Generous: a loaded CI machine; the figures measured are in the test output.
SETTLE_WITHIN = 90.0


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    """A runtime on the PDF extractor, with screening and fenced workers."""
    clock = FakeScheduler()
    store = MemoryStore()
    blobs = BlobStore(tmp_path / "blobs")
    temp_root = tmp_path / "work"
    temp_root.mkdir()
    pool = WorkerPool(
        workers=2,
        processor=DEFAULT_PROCESSOR,
        memory_limit_bytes=1 << 30,
        process_limits=ProcessLimits(cpu_seconds_per_attempt=CPU_SECONDS, max_open_files=64),
        temp_root=temp_root,
    )
    runtime = Runtime(
        store=store, blobs=blobs, executor=ScreenedExecutor(pool), scheduler=clock, rand=lambda: 0.5
    )
    waiter = Waiter(store)
    try:
        yield Harness(runtime, clock, pool, store, blobs, waiter, temp_root)
    finally:
        waiter.close()
        runtime.close()
        pool.close()
        clock.close()
    assert list(temp_root.rglob("*")) == [], "worker temp files left behind"


def _by_name(view: BatchView) -> dict[str, FileRecord]:
    return {f.name: f for f in view.files}


def _settle(h: Harness, *named: tuple[str, bytes]) -> tuple[BatchView, float]:
    files = [NewFile(name, h.blobs.put(data), len(data)) for name, data in named]
    started = time.monotonic()
    batch_id = h.runtime.submit(files).batch.batch_id
    view = h.settled(batch_id, timeout=SETTLE_WITHIN)
    return view, time.monotonic() - started


def test_each_hostile_file_fails_with_its_code_while_the_others_succeed(h: Harness) -> None:
    hostile = [(name, getattr(hostile_pdfs, name)()) for name, _ in hostile_pdfs.HOSTILE]
    good = [
        ("first.pdf", hostile_pdfs.one_page("first innocent")),
        ("last.pdf", hostile_pdfs.one_page("last innocent")),
    ]

    view, seconds = _settle(h, good[0], *hostile, good[1])

    print(f"\n{len(hostile)} hostile and 2 good files settled in {seconds:.2f} s")
    files = _by_name(view)
    for name, text in (("first.pdf", "first innocent"), ("last.pdf", "last innocent")):
        assert files[name].state is FileState.SUCCEEDED
        assert h.runtime.result(view.batch.batch_id, files[name].file_id).pages == (text,)
    for name, code in hostile_pdfs.HOSTILE:
        record = files[name]
        assert (record.state, record.error and record.error.code) == (FileState.FAILED, code), name
        assert [a.outcome for a in record.attempts] == [AttemptOutcome.FAILED], name
    # Screened out: no worker ever saw it.
    assert files["wrong_magic"].attempts[0].worker_pid is None
    parsed = [name for name, code in hostile_pdfs.HOSTILE if code is not ErrorCode.NOT_A_PDF]
    assert all(files[name].attempts[0].worker_pid for name in parsed)


def test_a_file_that_keeps_the_cpu_busy_is_killed_at_its_cpu_budget(h: Harness) -> None:
    pids_before = set(h.pool.pids())

    view, seconds = _settle(
        h,
        ("cpu_bomb.pdf", hostile_pdfs.cpu_bomb()),
        ("innocent.pdf", hostile_pdfs.one_page("innocent")),
    )

    print(f"\ncpu bomb with a {CPU_SECONDS} s budget settled in {seconds:.2f} s")
    files = _by_name(view)
    bomb = files["cpu_bomb.pdf"]
    assert bomb.state is FileState.FAILED
    assert bomb.error is not None
    assert bomb.error.code is ErrorCode.PDF_LIMIT_EXCEEDED
    assert [a.code for a in bomb.attempts] == [ErrorCode.PDF_LIMIT_EXCEEDED]
    assert files["innocent.pdf"].state is FileState.SUCCEEDED
    # The worker that ran it was killed by the kernel, and replaced.
    assert bomb.attempts[0].worker_pid in pids_before
    assert bomb.attempts[0].worker_pid not in h.pool.pids()
    assert seconds < CPU_SECONDS + 30


def test_workers_are_fenced_in(pool_factory: PoolFactory, blob: Callable[[bytes], str]) -> None:
    # The workers are moved to one CPU of this test's: the last.
    last_cpu = max(os.sched_getaffinity(0))
    pool = pool_factory(
        processor=FENCE,
        process_limits=ProcessLimits(
            cpu_seconds_per_attempt=7, max_open_files=48, niceness=7, cpus=frozenset({last_cpu})
        ),
    )
    recorder = Recorder()
    recorder.submit(pool, "a", blob(b"%PDF-"))
    outcome = recorder.done("a")
    assert not isinstance(outcome, AttemptFailure), outcome

    report = json.loads(unseal(outcome.result).pages[0])
    assert report["umask"] == 0o077
    assert report["core"] == [0, 0]
    assert report["nofile"] == [48, 48]
    assert report["cpu_used"] < report["cpu_soft"] <= report["cpu_used"] + 8
    assert report["temp_dir_mode"] == 0o700
    assert report["mkstemp_mode"] == report["open_mode"] == 0o600
    # Below the service's priority by as much as asked (the fork server runs at its).
    assert report["niceness"] == min(os.nice(0) + 7, 19)
    assert report["cpus"] == [last_cpu]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", ErrorCode.PDF_EMPTY),
        (b"GIF89a" + bytes(2000), ErrorCode.NOT_A_PDF),
        (bytes(1020) + b"%PDF-", ErrorCode.NOT_A_PDF),
        (bytes(1019) + b"%PDF-", None),
        (b"%PDF-1.7 whatever follows", None),
    ],
)
def test_screening_reads_the_signature_as_the_extractor_does(
    tmp_path: Path, content: bytes, code: ErrorCode | None
) -> None:
    path = tmp_path / "blob"
    path.write_bytes(content)
    assert screen(path) is code
    if code is not None:
        with pytest.raises(Exception) as raised:  # noqa: PT011 - whatever the extractor raises
            extract_pdf(content, None)
        assert classify(raised.value) is code


def test_exhaustion_that_pypdf_rewraps_keeps_its_code() -> None:
    for cause, code in (
        (RecursionError(), ErrorCode.PDF_LIMIT_EXCEEDED),
        (MemoryError(), ErrorCode.MEMORY_LIMIT_EXCEEDED),
    ):
        wrapped = PdfReadError("Error reading PDF file.")
        wrapped.__cause__ = cause
        assert classify(wrapped) is code
    assert classify(PdfReadError("Error reading PDF file.")) is ErrorCode.PDF_MALFORMED


def test_only_death_by_sigxcpu_is_the_files_fault() -> None:
    assert classify_exit(-signal.SIGXCPU) is ErrorCode.PDF_LIMIT_EXCEEDED
    for other in (-signal.SIGKILL, -signal.SIGSEGV, 1, 70, None):
        assert classify_exit(other) is ErrorCode.WORKER_CRASHED


def test_process_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="cpu_seconds_per_attempt must be positive, got 0"):
        ProcessLimits(cpu_seconds_per_attempt=0)
    with pytest.raises(ValueError, match="max_open_files must be positive, got -1"):
        ProcessLimits(max_open_files=-1)
    for niceness in (-1, 20):
        with pytest.raises(ValueError, match=f"niceness must be 0 to 19, got {niceness}"):
            ProcessLimits(niceness=niceness)
    for cpus in (frozenset(), frozenset({-1, 0})):
        with pytest.raises(ValueError, match="cpus must name at least one CPU, none negative"):
            ProcessLimits(cpus=cpus)
