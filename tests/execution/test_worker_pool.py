"""WorkerPool with real worker processes: crashes, cancels, limits and races."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from actors.execution.contract import AttemptFailure, AttemptHandle, AttemptJob, AttemptSuccess
from actors.execution.extract import PdfLimits
from actors.execution.local.pool import WorkerPool
from actors.policy.catalogue import ErrorCode
from actors.policy.sealed import seal, unseal
from tests.helpers.pool_fixtures import CALLBACK_TIMEOUT, PoolFactory, Recorder
from tests.helpers.processors import PLAIN, result
from tests.helpers.writer_pdfs import aes, make_pdf

Blob = Callable[[bytes], str]
REPLACE_TIMEOUT = 10.0


def has_workers(count: int, without: int | None = None) -> Callable[[object], bool]:
    """A predicate for ``wait_for_pids``: ``count`` workers, ``without`` not among them."""
    return lambda pids: len(pids) == count and without not in pids  # type: ignore[arg-type, operator]


def failure(outcome: object) -> AttemptFailure:
    assert isinstance(outcome, AttemptFailure), outcome
    return outcome


def success(outcome: object) -> AttemptSuccess:
    assert isinstance(outcome, AttemptSuccess), outcome
    return outcome


def test_runs_a_job_and_reports_start_then_outcome(pool_factory: PoolFactory, blob: Blob) -> None:
    pool = pool_factory()
    recorder = Recorder()

    recorder.submit(pool, "a", blob(b"pid"))
    outcome = success(recorder.done("a"))

    pid = outcome.worker_pid
    assert pid in pool.pids()
    assert unseal(outcome.result) == result(str(pid))
    assert recorder.events["a"] == [("started", pid), ("done", outcome)]
    monitors = [t for t in threading.enumerate() if t.name == "pdfbatch-worker-pool-monitor"]
    assert [t.daemon for t in monitors] == [False]


def test_processor_without_attempt_parameter_gets_data_and_password(
    pool_factory: PoolFactory, blob: Blob
) -> None:
    pool = pool_factory(processor=PLAIN)
    recorder = Recorder()

    recorder.submit(pool, "a", blob(b"content"), password="pw")

    assert unseal(success(recorder.done("a")).result) == result("content", "'pw'")


def test_attempt_number_reaches_the_processor(pool_factory: PoolFactory, blob: Blob) -> None:
    pool = pool_factory()
    recorder = Recorder()
    path = blob(b"fail-until:3")

    for attempt in (1, 2, 3):
        recorder.submit(pool, f"try-{attempt}", path, attempt=attempt)

    assert failure(recorder.done("try-1")).code is ErrorCode.PDF_MALFORMED
    assert failure(recorder.done("try-2")).code is ErrorCode.PDF_MALFORMED
    assert unseal(success(recorder.done("try-3")).result) == result("attempt 3")


@pytest.mark.parametrize(
    ("script", "code", "exception_type"),
    [
        (b"pdf-error", ErrorCode.PDF_MALFORMED, "PdfReadError"),
        (b"bug", ErrorCode.INTERNAL, "ValueError"),
        (b"not-a-result", ErrorCode.INTERNAL, "TypeError"),
    ],
)
def test_exceptions_are_classified_in_the_worker_which_stays(
    pool_factory: PoolFactory, blob: Blob, script: bytes, code: ErrorCode, exception_type: str
) -> None:
    pool = pool_factory()
    recorder = Recorder()

    recorder.submit(pool, "a", blob(script))
    outcome = failure(recorder.done("a"))

    assert (outcome.code, outcome.exception_type) == (code, exception_type)
    assert outcome.worker_pid in pool.pids()


def test_unreadable_blob_is_storage_unavailable(pool_factory: PoolFactory, tmp_path: Path) -> None:
    pool = pool_factory()
    recorder = Recorder()

    recorder.submit(pool, "a", str(tmp_path / "missing"))
    outcome = failure(recorder.done("a"))

    assert outcome.code is ErrorCode.STORAGE_UNAVAILABLE
    assert outcome.exception_type == "FileNotFoundError"


def test_worker_runs_with_its_limits_and_private_temp_dir(
    pool_factory: PoolFactory, blob: Blob
) -> None:
    pool = pool_factory(
        memory_limit_bytes=768 * 1024**2,
        pdf_limits=PdfLimits(max_decompressed_stream_length=1_234_567),
    )
    recorder = Recorder()

    recorder.submit(pool, "a", blob(b"environment"))
    outcome = success(recorder.done("a"))

    environment = json.loads(unseal(outcome.result).pages[0])
    temp_dir = pool.worker_temp_dirs()[outcome.worker_pid or 0]
    assert environment == {
        "rlimit_as": 768 * 1024**2,
        "pypdf_log_level": 40,
        "tempdir": str(temp_dir),
        "zlib_maximum_output_length": 1_234_567,
        "jbig2dec_binary": None,
    }
    assert stat.S_IMODE(temp_dir.stat().st_mode) == 0o700


def test_temp_files_are_removed_after_each_attempt(pool_factory: PoolFactory, blob: Blob) -> None:
    pool = pool_factory()
    recorder = Recorder()

    recorder.submit(pool, "a", blob(b"tempfile"))
    outcome = success(recorder.done("a"))

    left, tmpdir = unseal(outcome.result).pages
    assert Path(left).parent == Path(tmpdir) == pool.worker_temp_dirs()[outcome.worker_pid or 0]
    assert not Path(left).exists()
    assert Path(tmpdir).is_dir()


@pytest.mark.parametrize(
    ("script", "detail"),
    [
        (b"exit:3", "exit code 3"),
        (b"sigkill", "exit code -9 (SIGKILL)"),
        (b"segv", "exit code -11 (SIGSEGV)"),
    ],
)
def test_crash_fails_only_its_own_job_and_the_worker_is_replaced(
    pool_factory: PoolFactory, blob: Blob, tmp_path: Path, script: bytes, detail: str
) -> None:
    pool = pool_factory()
    recorder = Recorder()
    gate = tmp_path / "gate"
    os.mkfifo(gate)

    recorder.submit(pool, "survivor", blob(b"gate:" + str(gate).encode()))
    survivor_pid = recorder.started("survivor")
    recorder.submit(pool, "victim", blob(script))
    victim_pid = recorder.started("victim")
    victim_dir = pool.worker_temp_dirs()[victim_pid or 0]
    outcome = failure(recorder.done("victim"))

    assert outcome == AttemptFailure(ErrorCode.WORKER_CRASHED, victim_pid, "", detail)
    assert not victim_dir.exists()
    assert pool.wait_for_pids(has_workers(2, without=victim_pid), REPLACE_TIMEOUT)
    gate.write_text("let through")
    assert success(recorder.done("survivor")) == AttemptSuccess(
        seal(result("let through")), survivor_pid
    )
    assert survivor_pid in pool.pids()


def test_idle_worker_killed_from_outside_is_replaced(pool_factory: PoolFactory) -> None:
    pool = pool_factory()
    victim = pool.pids()[0]

    os.kill(victim, signal.SIGKILL)

    assert pool.wait_for_pids(has_workers(2, without=victim), REPLACE_TIMEOUT)


def test_memory_cap_fails_the_job_and_replaces_the_worker(
    pool_factory: PoolFactory, blob: Blob
) -> None:
    pool = pool_factory(workers=1, memory_limit_bytes=256 * 1024**2)
    recorder = Recorder()

    recorder.submit(pool, "small", blob(b"alloc:10000000"))
    recorder.submit(pool, "huge", blob(b"alloc:1073741824"))
    recorder.submit(pool, "after", blob(b"pid"))

    assert unseal(success(recorder.done("small")).result) == result("10000000")
    huge = failure(recorder.done("huge"))
    assert (huge.code, huge.exception_type) == (ErrorCode.MEMORY_LIMIT_EXCEEDED, "MemoryError")
    after = success(recorder.done("after"))
    assert after.worker_pid != huge.worker_pid
    assert pool.wait_for_pids(has_workers(1, without=huge.worker_pid), REPLACE_TIMEOUT)


def test_cancel_kills_a_hung_job_at_once(pool_factory: PoolFactory, blob: Blob) -> None:
    pool = pool_factory()
    recorder = Recorder()
    handle = recorder.submit(pool, "hung", blob(b"hang"))
    pid = recorder.started("hung")
    temp_dir = pool.worker_temp_dirs()[pid or 0]

    began = time.perf_counter()
    handle.cancel(ErrorCode.PROCESSING_TIMEOUT)
    latency = time.perf_counter() - began

    assert recorder.done_now("hung") == AttemptFailure(ErrorCode.PROCESSING_TIMEOUT, pid)
    assert latency < 0.25
    assert not psutil.pid_exists(pid or 0)
    assert not temp_dir.exists()
    handle.cancel(ErrorCode.CANCELLED)
    assert pool.wait_for_pids(has_workers(2, without=pid), REPLACE_TIMEOUT)
    recorder.submit(pool, "next", blob(b"ok"))
    assert isinstance(recorder.done("next"), AttemptSuccess)
    assert recorder.done_counts()["hung"] == 1


def test_cancel_of_a_queued_job_reports_it_without_a_worker(
    pool_factory: PoolFactory, blob: Blob
) -> None:
    pool = pool_factory(workers=1)
    recorder = Recorder()
    running = recorder.submit(pool, "running", blob(b"hang"))
    pid = recorder.started("running")
    queued = recorder.submit(pool, "queued", blob(b"ok"))

    queued.cancel(ErrorCode.CANCELLED)

    assert recorder.done_now("queued") == AttemptFailure(ErrorCode.CANCELLED, None)
    running.cancel(ErrorCode.CANCELLED)
    assert recorder.done_now("running") == AttemptFailure(ErrorCode.CANCELLED, pid)
    recorder.submit(pool, "later", blob(b"ok"))
    assert isinstance(recorder.done("later"), AttemptSuccess)
    # The queue is first in, first out: "queued" was passed over, never started.
    assert recorder.events["queued"] == [("done", AttemptFailure(ErrorCode.CANCELLED, None))]


def test_cancel_from_inside_on_started_reports_once_after_the_start(
    pool_factory: PoolFactory, blob: Blob
) -> None:
    pool = pool_factory()
    events: list[tuple[str, object]] = []
    done = threading.Event()
    handles: list[AttemptHandle] = []

    def on_started(pid: int | None) -> None:
        events.append(("started", pid))
        handles[0].cancel(ErrorCode.CANCELLED)

    def on_done(outcome: object) -> None:
        events.append(("done", outcome))
        done.set()

    handles.append(pool.submit(AttemptJob("b", "f", 1, blob(b"hang")), on_started, on_done))

    assert done.wait(CALLBACK_TIMEOUT)
    pid = events[0][1]
    assert events == [("started", pid), ("done", AttemptFailure(ErrorCode.CANCELLED, pid))]  # type: ignore[arg-type]


def test_cancel_after_completion_changes_nothing(pool_factory: PoolFactory, blob: Blob) -> None:
    pool = pool_factory()
    recorder = Recorder()
    handle = recorder.submit(pool, "a", blob(b"ok"))
    outcome = success(recorder.done("a"))

    handle.cancel(ErrorCode.CANCELLED)
    pool.close()

    assert recorder.events["a"] == [("started", outcome.worker_pid), ("done", outcome)]


def test_cancels_racing_completions_give_exactly_one_outcome(
    pool_factory: PoolFactory, blob: Blob
) -> None:
    pool = pool_factory()
    recorder = Recorder()
    path = blob(b"ok")
    handles = [recorder.submit(pool, f"job-{n}", path) for n in range(150)]
    chooser = random.Random(7)

    for handle in handles:
        if chooser.random() < 0.7:
            handle.cancel(ErrorCode.CANCELLED)
    for _ in handles:
        recorder.all_done.get(timeout=CALLBACK_TIMEOUT)
    pool.close()

    assert set(recorder.done_counts().values()) == {1}
    for events in recorder.events.values():
        kinds = [kind for kind, _ in events]
        assert kinds in (["done"], ["started", "done"])


def test_close_cancels_running_and_queued_jobs(pool_factory: PoolFactory, blob: Blob) -> None:
    pool = pool_factory()
    recorder = Recorder()
    for key in ("run-1", "run-2"):
        recorder.submit(pool, key, blob(b"hang"))
    pids = {key: recorder.started(key) for key in ("run-1", "run-2")}
    for key in ("queued-1", "queued-2"):
        recorder.submit(pool, key, blob(b"ok"))

    pool.close()

    for key, pid in pids.items():
        assert recorder.done_now(key) == AttemptFailure(ErrorCode.CANCELLED, pid)
        assert not psutil.pid_exists(pid or 0)
    for key in ("queued-1", "queued-2"):
        assert recorder.done_now(key) == AttemptFailure(ErrorCode.CANCELLED, None)
    assert pool.pids() == []
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(AttemptJob("b", "f", 1, "x"), lambda pid: None, lambda outcome: None)
    pool.close()
    assert set(recorder.done_counts().values()) == {1}


def test_a_raising_callback_does_not_stop_the_pool(pool_factory: PoolFactory, blob: Blob) -> None:
    pool = pool_factory()
    recorder = Recorder()

    def explode(outcome: object) -> None:
        raise RuntimeError("callback bug")

    pool.submit(AttemptJob("b", "bad", 1, blob(b"ok")), explode, explode)
    recorder.submit(pool, "next", blob(b"ok"))

    assert isinstance(recorder.done("next"), AttemptSuccess)


def test_stress_random_kills_and_cancels_every_job_gets_one_outcome(
    pool_factory: PoolFactory, blob: Blob
) -> None:
    pool = pool_factory(workers=3)
    recorder = Recorder()
    chooser = random.Random(11)
    scripts = [blob(b"ok"), blob(b"sleep:0.005"), blob(b"sleep:0.02")]
    stop = threading.Event()
    killed: set[int] = set()

    def killer() -> None:
        while not stop.wait(0.01):
            pids = pool.pids()
            if pids:
                victim = chooser.choice(pids)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                    killed.add(victim)

    thread = threading.Thread(target=killer, name="test-killer")
    thread.start()
    try:
        handles = [recorder.submit(pool, f"job-{n}", chooser.choice(scripts)) for n in range(200)]
        for handle in handles[::9]:
            handle.cancel(ErrorCode.CANCELLED)
        outcomes = [recorder.all_done.get(timeout=60) for _ in handles]
    finally:
        stop.set()
        thread.join()

    codes = {o.code for _, o in outcomes if isinstance(o, AttemptFailure)}
    assert codes <= {ErrorCode.WORKER_CRASHED, ErrorCode.CANCELLED}
    assert ErrorCode.WORKER_CRASHED in codes
    assert killed
    # A worker killed last may not be noticed yet: a job sent to it would crash too.
    assert pool.wait_for_pids(
        lambda pids: len(pids) == 3 and not killed & set(pids), REPLACE_TIMEOUT
    )
    recorder.submit(pool, "after", scripts[0])
    assert isinstance(recorder.done("after"), AttemptSuccess)
    pool.close()
    assert set(recorder.done_counts().values()) == {1}
    assert len(recorder.done_counts()) == 201
    for events in recorder.events.values():
        assert [kind for kind, _ in events] in (["done"], ["started", "done"])


def test_real_extraction_through_the_pool(pool_factory: PoolFactory, blob: Blob) -> None:
    pool = pool_factory(processor="actors.execution.extract:extract_pdf")
    recorder = Recorder()
    locked = blob(make_pdf("locked", encrypt=aes("pw")))

    recorder.submit(pool, "plain", blob(make_pdf("one", "two")))
    recorder.submit(pool, "no-password", locked)
    recorder.submit(pool, "password", locked, password="pw")
    recorder.submit(pool, "junk", blob(b"not a pdf at all"))

    assert unseal(success(recorder.done("plain")).result).pages == ("one", "two")
    assert failure(recorder.done("no-password")).code is ErrorCode.PDF_ENCRYPTED
    assert unseal(success(recorder.done("password")).result).pages == ("locked",)
    assert failure(recorder.done("junk")).code is ErrorCode.NOT_A_PDF


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "workers must be at least 1, got 0"),
        ({"memory_limit_bytes": 0}, "memory_limit_bytes must be positive, got 0"),
        ({"processor": "no-colon"}, "processor must look like 'module:function'"),
        ({"processor": "tests.helpers.processors:missing"}, "cannot load processor"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        WorkerPool(temp_root=tmp_path, **kwargs)  # type: ignore[arg-type]


# What parses hostile PDFs loads the policy and execution layers, and nothing of the runtime.
_HEAVY = ("pykka", "sqlite3", "_sqlite3", "grpc", "prometheus_client", "server", "ray")
_OTHER_LAYERS = ("actors.orchestration", "actors.storage")


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in _HEAVY or m.startswith(_OTHER_LAYERS)]


def test_a_worker_process_loads_no_runtime_store_or_wire(
    pool_factory: PoolFactory, blob: Blob
) -> None:
    pool = pool_factory()
    recorder = Recorder()

    recorder.submit(pool, "a", blob(b"modules"))
    loaded = json.loads(unseal(success(recorder.done("a")).result).pages[0])

    assert "actors.execution.local.worker" in loaded
    assert _heavy(loaded) == []


def test_the_worker_entry_modules_alone_import_nothing_heavy() -> None:
    # A fresh interpreter: what the fork server preloads for the real extractor.
    script = (
        "import sys, actors.execution.local.worker, actors.execution.extract; "
        "print(*sorted(sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()

    assert "pypdf" in loaded
    assert _heavy(loaded) == []
