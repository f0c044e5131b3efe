"""The Ray executor on a real single-node Ray: the supervision core's guarantees hold.

One Ray instance serves the whole module (``tests.ray_fixtures``); the runtime's time is
a fake clock, so backoffs and deadlines move only when a test advances it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

pytest.importorskip("ray", reason="the Ray executor needs the 'ray' extra")

from actors.execution.contract import AttemptFailure, AttemptSuccess
from actors.execution.extract import PdfLimits
from actors.execution.factory import make_executor
from actors.execution.local.pool import WorkerPool
from actors.execution.ray.executor import RayExecutor
from actors.execution.ray.processes import BUSY_MARKER, WorkerLocation, reap_on_nodes
from actors.policy.catalogue import ErrorCode
from actors.policy.model import AttemptOutcome, BatchState, BatchView, FileState
from actors.policy.rules import BatchPolicy, RetryPolicy
from bench.samples import not_a_pdf, text_pdf
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from tests.harness import Harness, build_harness
from tests.pool_fixtures import Recorder, blob
from tests.processors import SCRIPTED
from tests.ray_fixtures import RayInstance, build_ray_harness, process_gone, ray_instance
from tests.server_fixtures import ServerFactory, serve

__all__ = ["blob", "ray_instance", "serve"]  # fixtures, imported for pytest

Blob = Callable[[bytes], str]
MIXED = (
    b"ok",
    b"segv",
    b"pdf-error",
    b"ok",
    b"sigkill",
    b"exit:3",
    b"bug",
    b"alloc:4000000000",
    b"not-a-result",
    b"ok",
)


@pytest.fixture
def h(ray_instance: RayInstance, tmp_path: Path) -> Iterator[Harness]:
    yield from build_ray_harness(tmp_path)


@pytest.fixture
def executors(ray_instance: RayInstance) -> Iterator[Callable[..., RayExecutor]]:
    """Make Ray executors running the scripted processor; close them after the test."""
    made: list[RayExecutor] = []

    def make(**options: object) -> RayExecutor:
        options.setdefault("processor", SCRIPTED)
        made.append(RayExecutor(**options))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for executor in made:
        executor.close()


def _policy(**retry: object) -> BatchPolicy:
    defaults: dict[str, object] = {"jitter": "none", "initial_backoff": 1.0, "multiplier": 2.0}
    return BatchPolicy(max_concurrency=4, retry=RetryPolicy(**(defaults | retry)))


def _in_state(state: FileState, count: int = 1) -> Callable[[BatchView], bool]:
    return lambda view: view.counts[state] >= count


def _summary(view: BatchView) -> list[tuple[FileState, ErrorCode | None]]:
    return [(f.state, f.error.code if f.error else None) for f in view.files]


def _pids(view: BatchView) -> list[int]:
    return [a.worker_pid for f in view.files for a in f.attempts if a.worker_pid is not None]


def test_a_mixed_batch_ends_exactly_as_with_the_local_pool(h: Harness, tmp_path: Path) -> None:
    batch_id = h.runtime.submit(h.files(*MIXED), policy=_policy(max_attempts=1)).batch.batch_id
    on_ray = h.settled(batch_id)
    local_path = tmp_path / "local"
    local_path.mkdir()
    local_harness = build_harness(local_path)
    local = next(local_harness)
    try:
        local_id = local.runtime.submit(local.files(*MIXED), policy=_policy(max_attempts=1))
        on_pool = local.settled(local_id.batch.batch_id)
    finally:
        next(local_harness, None)  # closes it and checks its workers' temp files

    assert on_ray.batch.state is on_pool.batch.state is BatchState.PARTIALLY_SUCCEEDED
    assert _summary(on_ray) == _summary(on_pool)
    ok, failed = FileState.SUCCEEDED, FileState.FAILED
    assert _summary(on_ray) == [
        (ok, None),
        (failed, ErrorCode.WORKER_CRASHED),
        (failed, ErrorCode.PDF_MALFORMED),
        (ok, None),
        (failed, ErrorCode.WORKER_CRASHED),
        (failed, ErrorCode.WORKER_CRASHED),
        (failed, ErrorCode.INTERNAL),
        (failed, ErrorCode.MEMORY_LIMIT_EXCEEDED),
        (failed, ErrorCode.INTERNAL),
        (ok, None),
    ]
    assert all(len(f.attempts) == 1 for f in on_ray.files)
    assert h.runtime.result(batch_id, on_ray.files[0].file_id).pages == ("ok",)


def test_a_worker_killed_mid_attempt_is_retried_with_backoff(h: Harness) -> None:
    policy = _policy(max_attempts=5, initial_backoff=2.0, multiplier=3.0, jitter="full")
    batch_id = h.runtime.submit(h.files(b"crash-until:3"), policy=policy).batch.batch_id
    for attempt, delay in enumerate([1.0, 3.0], start=1):  # rand() = 0.5 of caps 2, 6
        view = h.waiter.until(
            batch_id,
            lambda v, n=attempt: (
                v.files[0].state is FileState.BACKOFF and len(v.files[0].attempts) == n
            ),
        )
        last = view.files[0].attempts[-1]
        assert last.code is ErrorCode.WORKER_CRASHED
        assert last.retry_delay == pytest.approx(delay)
        # A worker that dies right after it started may take its "started" with it;
        # Ray may report the crash while the process is still tearing itself down.
        pid = last.worker_pid
        assert pid is None or _eventually(lambda pid=pid: process_gone(pid))
        assert view.files[0].next_attempt_at == pytest.approx(h.clock.now() + delay)
        h.clock.advance(delay - 0.001)
        assert h.store.load(batch_id).files[0].state is FileState.BACKOFF  # type: ignore[union-attr]
        h.clock.advance(0.001)
    view = h.settled(batch_id)
    assert view.batch.state is BatchState.SUCCEEDED
    assert [a.outcome for a in view.files[0].attempts] == [
        AttemptOutcome.FAILED,
        AttemptOutcome.FAILED,
        AttemptOutcome.SUCCEEDED,
    ]
    assert h.runtime.result(batch_id, view.files[0].file_id).pages == ("attempt 3",)


def test_a_hung_attempt_times_out_by_the_clock(h: Harness) -> None:
    policy = BatchPolicy(file_timeout=30, retry=RetryPolicy(max_attempts=1))
    batch_id = h.runtime.submit(h.files(b"hang"), policy=policy).batch.batch_id
    h.waiter.until(batch_id, _in_state(FileState.RUNNING))
    h.clock.wait_pending(1, timeout=30)  # a worker runs it: its deadline is armed
    h.clock.advance(29.9)
    assert h.store.load(batch_id).files[0].state is FileState.RUNNING  # type: ignore[union-attr]
    h.clock.advance(0.1)
    view = h.settled(batch_id)
    assert view.files[0].error is not None
    assert view.files[0].error.code is ErrorCode.PROCESSING_TIMEOUT
    assert view.files[0].attempts[0].duration == pytest.approx(30.0)
    (pid,) = _pids(view)
    assert process_gone(pid)


def test_cancel_kills_hung_tasks_and_returns_with_nothing_running(h: Harness) -> None:
    batch = h.runtime.submit(h.files(b"hang", b"hang", b"hang", b"hang"), policy=_policy())
    batch_id = batch.batch.batch_id
    h.clock.wait_pending(2, timeout=30)  # both CPUs run a hung attempt: deadlines armed
    busy = [where.pid for where in h.pool.running()]  # type: ignore[attr-defined]
    assert len(busy) == 2
    cancelled = h.runtime.cancel(batch_id)
    assert cancelled.batch.state is BatchState.CANCELLED
    assert cancelled.counts[FileState.CANCELLED] == 4
    assert h.clock.pending() == [], "deadlines and backoffs are disarmed"
    assert all(process_gone(pid) for pid in busy)


def test_cancel_returns_once_the_worker_is_gone_and_reports_once(
    executors: Callable[..., RayExecutor], blob: Blob
) -> None:
    executor = executors()
    recorder = Recorder()
    handle = recorder.submit(executor, "a", blob(b"hang"))  # type: ignore[arg-type]
    pid = recorder.started("a")
    assert pid is not None
    assert not process_gone(pid)
    handle.cancel(ErrorCode.PROCESSING_TIMEOUT)
    assert process_gone(pid)
    outcome = recorder.done_now("a")
    assert outcome == AttemptFailure(ErrorCode.PROCESSING_TIMEOUT, pid)
    handle.cancel(ErrorCode.CANCELLED)
    assert recorder.events["a"] == [("started", pid), ("done", outcome)]


def test_races_between_answers_and_cancels_report_each_attempt_once(
    executors: Callable[..., RayExecutor], blob: Blob
) -> None:
    executor = executors()
    recorder = Recorder()
    keys = [str(i) for i in range(12)]
    handles = [
        recorder.submit(executor, k, blob(f"sleep:{int(k) % 4 * 0.05}".encode())) for k in keys
    ]  # type: ignore[arg-type]
    cancels = [
        threading.Thread(target=handles[i].cancel, args=(ErrorCode.CANCELLED,))
        for i in range(0, len(keys), 2)
    ]
    for thread in cancels:
        thread.start()
    executor.cancel_batch("batch", ErrorCode.CANCELLED)
    for thread in cancels:
        thread.join()
    for key in keys:
        recorder.done(key)
    assert set(recorder.done_counts().values()) == {1}
    for events in recorder.events.values():
        assert events[-1][0] == "done"
        assert [kind for kind, _ in events].count("started") <= 1


def test_pdf_limits_memory_cap_and_temp_dir_apply_in_ray_workers(
    executors: Callable[..., RayExecutor], blob: Blob, ray_instance: RayInstance
) -> None:
    capped = executors(
        memory_limit_bytes=512 << 20, pdf_limits=PdfLimits(max_decompressed_stream_length=1234)
    )
    recorder = Recorder()
    recorder.submit(capped, "env", blob(b"environment"))  # type: ignore[arg-type]
    recorder.submit(capped, "temp", blob(b"tempfile"))  # type: ignore[arg-type]
    recorder.submit(capped, "password", blob(b"password"), password="s3cret")  # type: ignore[arg-type]
    environment = json.loads(_pages(recorder.done("env"))[0])
    pid = recorder.started("env")
    assert pid is not None
    own_maps = psutil.Process(pid).memory_info().vms
    assert environment["zlib_maximum_output_length"] == 1234
    assert environment["jbig2dec_binary"] is None
    assert environment["pypdf_log_level"] == 40
    assert Path(environment["tempdir"]).parent == ray_instance.worker_temp
    # The cap is what the worker maps for itself (GBs) plus 512 MiB.
    assert 0 < environment["rlimit_as"] - own_maps <= (512 + 256) << 20
    created, tmpdir = _pages(recorder.done("temp"))
    assert Path(created).parent == Path(tmpdir)
    assert not Path(created).exists()
    assert _pages(recorder.done("password")) == ("'s3cret'",)

    # The cap outlives the task in its process; the next attempt sets its own.
    uncapped = executors(memory_limit_bytes=None)
    for key in ("again-1", "again-2"):
        recorder.submit(uncapped, key, blob(b"environment"))  # type: ignore[arg-type]
        assert json.loads(_pages(recorder.done(key))[0])["rlimit_as"] == -1


def test_unreadable_blob_fails_without_reaching_ray(executors: Callable[..., RayExecutor]) -> None:
    recorder = Recorder()
    recorder.submit(executors(), "gone", "/nonexistent/blob")  # type: ignore[arg-type]
    outcome = recorder.done("gone")
    assert isinstance(outcome, AttemptFailure)
    assert outcome.code is ErrorCode.STORAGE_UNAVAILABLE
    assert recorder.events["gone"] == [("done", outcome)]


def test_close_cancels_what_runs_and_refuses_more(
    executors: Callable[..., RayExecutor], blob: Blob
) -> None:
    executor = executors()
    recorder = Recorder()
    recorder.submit(executor, "hung", blob(b"hang"))  # type: ignore[arg-type]
    pid = recorder.started("hung")
    executor.close()
    assert recorder.done_now("hung") == AttemptFailure(ErrorCode.CANCELLED, pid)
    assert pid is not None
    assert process_gone(pid)
    with pytest.raises(RuntimeError, match="closed"):
        recorder.submit(executor, "late", blob(b"ok"))  # type: ignore[arg-type]


def test_reap_on_nodes_waits_on_the_process_node(ray_instance: RayInstance, tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    temp_dir = tmp_path / "worker-temp"
    temp_dir.mkdir()
    (temp_dir / BUSY_MARKER).write_text("task-1")
    where = WorkerLocation(
        ray_instance.node_id, sleeper.pid, _start_ticks(sleeper.pid), str(temp_dir), "task-1"
    )
    try:
        assert reap_on_nodes([where], timeout=0.5) == [where], "a live process is reported"
        assert temp_dir.exists()
        (temp_dir / BUSY_MARKER).write_text("task-2")
        assert reap_on_nodes([where], timeout=30) == [], "it finished task-1: nothing runs"
        assert temp_dir.exists(), "a worker that lives on keeps its directory"
        (temp_dir / BUSY_MARKER).write_text("task-1")
        threading.Timer(0.3, sleeper.kill).start()
        assert reap_on_nodes([where]) == []
        assert not temp_dir.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    lost_node = WorkerLocation("ab" * 28, 1, 1, "/nonexistent", "task-1")
    assert reap_on_nodes([lost_node]) == [], "a dead node took its processes with it"


def test_make_executor_picks_ray_only_when_asked_or_addressed(
    ray_instance: RayInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    options = {"workers": 1, "processor": SCRIPTED, "temp_root": tmp_path}
    for kind, address, expected in [
        ("local", None, WorkerPool),
        ("auto", None, WorkerPool),
        ("auto", "auto", RayExecutor),
        ("ray", None, RayExecutor),
    ]:
        executor = make_executor(kind, ray_address=address, **options)  # type: ignore[arg-type]
        executor.close()
        assert type(executor) is expected, (kind, address)
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    executor = make_executor("auto", **options)  # type: ignore[arg-type]
    executor.close()
    assert isinstance(executor, RayExecutor)
    with pytest.raises(ValueError, match="executor kind"):
        make_executor("spark", **options)  # type: ignore[arg-type]


def _pages(outcome: object) -> tuple[str, ...]:
    assert isinstance(outcome, AttemptSuccess), outcome
    return outcome.result.pages


def _start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


def test_the_service_runs_on_ray_when_asked(
    ray_instance: RayInstance,
    serve: ServerFactory,
) -> None:
    server = serve(executor="ray")
    assert isinstance(server.service.pool, RayExecutor)
    batch = server.submit(("good.pdf", text_pdf("on ray")), ("notes.pdf", not_a_pdf()))
    server.settle(batch.batch_id)
    stored = server.stub.GetBatch(pb.GetBatchRequest(batch_id=batch.batch_id), timeout=60)
    assert stored.state == pb.BATCH_STATE_PARTIALLY_SUCCEEDED
    assert [(f.name, f.error.code) for f in stored.files] == [
        ("good.pdf", ""),
        ("notes.pdf", "NOT_A_PDF"),
    ]


def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition``: a process's exit has nothing to wait on from here."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
