"""The executor contract, one suite run over every executor: the local pool and Ray.

As pykka runs its own tests over each actor runtime, each test here runs once per
executor, through the real runtime with a fake clock (backoffs and deadlines move only
when a test advances it): the same files must end the same way, a hung attempt must
time out by the clock, a cancel must return with nothing running, a crash must fail
only its own attempt, and the memory cap must fail its file at once, whichever executor
runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.execution.local.pool import WorkerPool
from actors.policy.catalogue import ErrorCode
from actors.policy.model import AttemptOutcome, BatchState, BatchView, FileState
from actors.policy.rules import BatchPolicy, RetryPolicy
from tests.helpers.harness import Harness, build_harness
from tests.helpers.processes import eventually, process_gone
from tests.helpers.processors import FORGED

EXECUTORS = ["local", "ray"]

# Scripts whose outcome does not depend on the executor, and that outcome.
MIXED = (
    (b"ok", None),
    (b"segv", ErrorCode.WORKER_CRASHED),
    (b"pdf-error", ErrorCode.PDF_MALFORMED),
    (b"sigkill", ErrorCode.WORKER_CRASHED),
    (b"exit:3", ErrorCode.WORKER_CRASHED),
    (b"bug", ErrorCode.INTERNAL),
    (b"alloc:4000000000", ErrorCode.MEMORY_LIMIT_EXCEEDED),
    (b"not-a-result", ErrorCode.INTERNAL),
    (b"ok", None),
)


@pytest.fixture(scope="module", params=EXECUTORS)
def executor_kind(request: pytest.FixtureRequest) -> str:
    """Each executor in turn; Ray is started once, before the first of its tests."""
    if request.param == "ray":
        pytest.importorskip("ray", reason="the Ray executor needs the 'ray' extra")
        request.getfixturevalue("ray_instance")
    return str(request.param)


@pytest.fixture
def h(executor_kind: str, tmp_path: Path) -> Iterator[Harness]:
    """The runtime on the executor, with the scripted processor and a fake clock."""
    if executor_kind == "local":
        yield from build_harness(tmp_path)
        return
    from tests.helpers.ray_fixtures import build_ray_harness

    yield from build_ray_harness(tmp_path)


def _policy(**retry: object) -> BatchPolicy:
    defaults: dict[str, object] = {"jitter": "none", "initial_backoff": 1.0, "multiplier": 2.0}
    return BatchPolicy(max_concurrency=4, retry=RetryPolicy(**(defaults | retry)))


def _in_state(state: FileState, count: int = 1) -> Callable[[BatchView], bool]:
    return lambda view: view.counts[state] >= count


def _busy_pids(h: Harness) -> list[int]:
    """The processes running an attempt now."""
    if isinstance(h.pool, WorkerPool):
        return h.pool.pids()
    return [where.pid for where in h.pool.running()]  # type: ignore[attr-defined]


def test_the_same_files_end_the_same_way(h: Harness) -> None:
    files = h.files(*(script for script, _ in MIXED))
    batch_id = h.runtime.submit(files, policy=_policy(max_attempts=1)).batch.batch_id

    view = h.settled(batch_id)

    assert view.batch.state is BatchState.PARTIALLY_SUCCEEDED
    assert [f.error.code if f.error else None for f in view.files] == [c for _, c in MIXED]
    assert [f.state for f in view.files] == [
        FileState.FAILED if code else FileState.SUCCEEDED for _, code in MIXED
    ]
    assert all(len(f.attempts) == 1 for f in view.files), "none was retried"
    assert h.runtime.result(batch_id, view.files[0].file_id).pages == ("ok",)


def test_a_forged_result_fails_its_file_only(h: Harness) -> None:
    # Workers seal their results and the service stores them undecoded: what a broken
    # or hostile worker sends instead must fail its own file, the same on every executor.
    unstorable = [kind for kind in FORGED if kind not in ("valid", "over-the-limit")]
    scripts = [b"ok", b"forge:valid", *(b"forge:" + kind.encode() for kind in unstorable), b"ok"]
    batch_id = h.runtime.submit(h.files(*scripts), policy=_policy()).batch.batch_id

    view = h.settled(batch_id)

    assert view.batch.state is BatchState.PARTIALLY_SUCCEEDED
    assert [f.error.code if f.error else None for f in view.files] == [
        None,
        None,
        *(ErrorCode.RESULT_UNSTORABLE for _ in unstorable),
        None,
    ]
    assert all(len(f.attempts) == 1 for f in view.files), "none was retried"
    assert h.runtime.result(batch_id, view.files[1].file_id).pages == ("smile \U0001f600",)
    assert h.runtime.result(batch_id, view.files[-1].file_id).pages == ("ok",)


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
        if pid is not None:
            eventually(lambda pid=pid: process_gone(pid))
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
    (pid,) = [a.worker_pid for a in view.files[0].attempts if a.worker_pid is not None]
    assert process_gone(pid)


def test_cancel_kills_hung_workers_and_returns_with_nothing_running(h: Harness) -> None:
    batch = h.runtime.submit(h.files(b"hang", b"hang", b"hang", b"hang"), policy=_policy())
    batch_id = batch.batch.batch_id
    running = h.waiter.until(batch_id, _in_state(FileState.RUNNING, 2))
    h.clock.wait_pending(2, timeout=30)  # both workers run a hung attempt: deadlines armed
    busy = _busy_pids(h)
    assert len(busy) == 2

    cancelled = h.runtime.cancel(batch_id)

    assert cancelled.batch.state is BatchState.CANCELLED
    assert cancelled.counts[FileState.CANCELLED] == 4
    assert h.clock.pending() == [], "deadlines and backoffs are disarmed"
    assert all(process_gone(pid) for pid in busy)
    assert list(h.temp_root.glob("*/*")) == []
    again = h.runtime.cancel(batch_id)
    assert again.batch == cancelled.batch
    assert running.batch.sequence < cancelled.batch.sequence


def test_the_memory_cap_fails_the_file_without_retrying(h: Harness) -> None:
    batch_id = h.runtime.submit(h.files(b"alloc:4000000000", b"ok")).batch.batch_id

    view = h.settled(batch_id)

    assert view.files[0].error is not None
    assert view.files[0].error.code is ErrorCode.MEMORY_LIMIT_EXCEEDED
    assert len(view.files[0].attempts) == 1
    assert view.files[1].state is FileState.SUCCEEDED
