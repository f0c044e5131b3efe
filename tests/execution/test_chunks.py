"""The worker pool's hand-over in chunks and its turns across tenants and batches, with
real worker processes.

Each test holds the only worker on a gate (a FIFO the test writes to), queues what it
wants behind it, and opens the gate: what the queue does next is decided by the pool,
not by timing, and the tests assert the order of starts and each attempt's callbacks.
``chunk_seconds`` is set high so that a long queue is always handed over in chunks,
whatever the machine's speed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from actors.execution.contract import AttemptFailure, AttemptSuccess
from actors.execution.local.pool import MAX_CHUNK, WorkerPool, chunk_size
from actors.policy.catalogue import ErrorCode
from tests.helpers.pool_fixtures import PoolFactory, Recorder

Blob = Callable[[bytes], str]
# Far more work per chunk than any test queues: a long queue always goes in chunks.
ALWAYS_CHUNK = 3600.0


class Gate:
    """A FIFO a worker blocks on until the test opens it."""

    def __init__(self, directory: Path, name: str, blob: Blob) -> None:
        self.path = directory / name
        os.mkfifo(self.path)
        self.blob = blob(b"gate:" + str(self.path).encode())

    def open(self) -> None:
        self.path.write_text("open")


def warmed(
    pool_factory: PoolFactory, blob: Blob, recorder: Recorder, **kwargs: object
) -> WorkerPool:
    """A one-worker pool that has run one attempt, so it knows how long one takes."""
    pool = pool_factory(workers=1, chunk_seconds=ALWAYS_CHUNK, **kwargs)
    recorder.submit(pool, "warm", blob(b"ok"))
    assert isinstance(recorder.done("warm"), AttemptSuccess)
    return pool


def test_a_long_queue_reaches_a_worker_in_chunks_and_each_attempt_reports_as_it_runs(
    pool_factory: PoolFactory, blob: Blob, tmp_path: Path
) -> None:
    recorder = Recorder()
    pool = warmed(pool_factory, blob, recorder)
    gate = Gate(tmp_path, "gate", blob)
    recorder.submit(pool, "gate", gate.blob)
    worker_pid = recorder.started("gate")
    keys = [f"file-{index}" for index in range(10)]
    for key in keys:
        recorder.submit(pool, key, blob(b"pid"))
    before = pool.stats().handovers

    gate.open()

    for key in keys:
        outcome = recorder.done(key)
        assert isinstance(outcome, AttemptSuccess)
        assert outcome.worker_pid == worker_pid
        assert recorder.events[key] == [("started", worker_pid), ("done", outcome)]
    # One batch: its files start in the order submitted.
    assert recorder.start_order == ["warm", "gate", *keys]
    assert pool.stats().handovers - before < len(keys)


def test_a_worker_that_dies_fails_only_the_attempt_in_hand_the_rest_of_its_chunk_runs(
    pool_factory: PoolFactory, blob: Blob, tmp_path: Path
) -> None:
    recorder = Recorder()
    pool = warmed(pool_factory, blob, recorder)
    gate = Gate(tmp_path, "gate", blob)
    recorder.submit(pool, "gate", gate.blob)
    recorder.started("gate")
    recorder.submit(pool, "crash", blob(b"sigkill"))
    keys = [f"file-{index}" for index in range(5)]
    for key in keys:
        recorder.submit(pool, key, blob(b"pid"))

    gate.open()

    crashed = recorder.done("crash")
    assert isinstance(crashed, AttemptFailure)
    assert crashed.code is ErrorCode.WORKER_CRASHED
    for key in keys:
        outcome = recorder.done(key)
        assert isinstance(outcome, AttemptSuccess)
        assert outcome.worker_pid != crashed.worker_pid
        # Started once, on the replacement: the dead worker's chunk cost it nothing.
        assert recorder.events[key] == [("started", outcome.worker_pid), ("done", outcome)]


def test_a_cancel_drops_an_attempt_waiting_in_a_chunk_and_keeps_the_worker(
    pool_factory: PoolFactory, blob: Blob, tmp_path: Path
) -> None:
    recorder = Recorder()
    pool = warmed(pool_factory, blob, recorder)
    first, second = Gate(tmp_path, "first", blob), Gate(tmp_path, "second", blob)
    recorder.submit(pool, "first", first.blob)
    recorder.started("first")
    recorder.submit(pool, "second", second.blob)
    dropped = recorder.submit(pool, "dropped", blob(b"pid"))
    recorder.submit(pool, "after", blob(b"pid"))
    first.open()
    worker_pid = recorder.started("second")  # the three went over as one chunk
    assert pool.stats().queued == 2

    dropped.cancel(ErrorCode.CANCELLED)

    assert recorder.done_now("dropped") == AttemptFailure(ErrorCode.CANCELLED, None)
    second.open()
    after = recorder.done("after")
    # Same worker: it skipped the cancelled attempt rather than starting it and dying.
    assert isinstance(after, AttemptSuccess)
    assert after.worker_pid == worker_pid
    assert recorder.events["dropped"] == [("done", AttemptFailure(ErrorCode.CANCELLED, None))]
    assert worker_pid in pool.pids()


def test_queued_seconds_count_the_attempts_waiting_behind_the_running_one(
    pool_factory: PoolFactory, blob: Blob, tmp_path: Path
) -> None:
    recorder = Recorder()
    pool = pool_factory(workers=1, chunk_seconds=ALWAYS_CHUNK)
    first = Gate(tmp_path, "first", blob)
    recorder.submit(pool, "first", first.blob)
    recorder.started("first")
    recorder.submit(pool, "waiting", blob(b"pid"))
    # No attempt has ended: how long one takes is not known yet.
    assert pool.queued_seconds() == 0.0
    first.open()
    recorder.done("waiting")
    second = Gate(tmp_path, "second", blob)
    recorder.submit(pool, "second", second.blob)
    recorder.started("second")
    # What runs is not queued.
    assert pool.queued_seconds() == 0.0

    keys = [f"file-{index}" for index in range(6)]
    for key in keys[:4]:
        recorder.submit(pool, key, blob(b"pid"))
    four = pool.queued_seconds()
    for key in keys[4:]:
        recorder.submit(pool, key, blob(b"pid"))

    assert four > 0
    assert pool.queued_seconds() == pytest.approx(four * 6 / 4)
    second.open()
    for key in keys:
        recorder.done(key)
    assert pool.queued_seconds() == 0.0


def test_cancel_batch_drops_its_attempts_from_chunks_and_queue_and_spares_others(
    pool_factory: PoolFactory, blob: Blob, tmp_path: Path
) -> None:
    recorder = Recorder()
    pool = warmed(pool_factory, blob, recorder)
    first, second = Gate(tmp_path, "first", blob), Gate(tmp_path, "second", blob)
    recorder.submit(pool, "first", first.blob, batch="other")
    recorder.started("first")
    recorder.submit(pool, "second", second.blob, batch="other")
    doomed = [f"doomed-{index}" for index in range(3)]
    for key in doomed:
        recorder.submit(pool, key, blob(b"pid"), batch="doomed")
    recorder.submit(pool, "kept", blob(b"pid"), batch="other")
    first.open()
    worker_pid = recorder.started("second")

    pool.cancel_batch("doomed", ErrorCode.CANCELLED)

    for key in doomed:
        assert recorder.events[key] == [("done", AttemptFailure(ErrorCode.CANCELLED, None))]
    second.open()
    kept = recorder.done("kept")
    assert isinstance(kept, AttemptSuccess)
    assert kept.worker_pid == worker_pid


def test_tenants_take_turns_so_a_one_file_batch_is_not_stuck_behind_a_big_one(
    pool_factory: PoolFactory, blob: Blob, tmp_path: Path
) -> None:
    recorder = Recorder()
    pool = warmed(pool_factory, blob, recorder)
    gate = Gate(tmp_path, "gate", blob)
    recorder.submit(pool, "gate", gate.blob, tenant="b", batch="big")
    recorder.started("gate")
    big = [f"big-{index}" for index in range(30)]
    for key in big:
        recorder.submit(pool, key, blob(b"pid"), tenant="b", batch="big")
    recorder.submit(pool, "small", blob(b"pid"), tenant="a", batch="small")

    gate.open()

    for key in [*big, "small"]:
        assert isinstance(recorder.done(key), AttemptSuccess)
    after_gate = recorder.start_order[2:]
    # First come, first served would start it last (31st); turns start it second.
    assert after_gate.index("small") == 1
    assert [key for key in after_gate if key != "small"] == big


def test_a_tenants_batches_take_turns_too(
    pool_factory: PoolFactory, blob: Blob, tmp_path: Path
) -> None:
    recorder = Recorder()
    pool = warmed(pool_factory, blob, recorder)
    gate = Gate(tmp_path, "gate", blob)
    recorder.submit(pool, "gate", gate.blob, tenant="b", batch="big")
    recorder.started("gate")
    for index in range(20):
        recorder.submit(pool, f"big-{index}", blob(b"pid"), tenant="b", batch="big")
    recorder.submit(pool, "small", blob(b"pid"), tenant="b", batch="small")

    gate.open()

    assert isinstance(recorder.done("small"), AttemptSuccess)
    for index in range(20):
        assert isinstance(recorder.done(f"big-{index}"), AttemptSuccess)
    assert recorder.start_order[2:].index("small") == 1


def test_chunk_size_is_one_for_a_short_queue_and_bounded_for_a_long_one() -> None:
    assert chunk_size(2, 2, 0.001) == 1  # no more waiting than workers
    assert chunk_size(100, 2, None) == 1  # how long one takes is not known yet
    assert chunk_size(10, 2, 0.001) == 5  # the worker's share
    assert chunk_size(10_000, 2, 0.000_1) == MAX_CHUNK
    assert chunk_size(10_000, 2, 0.02, chunk_seconds=0.05) == 2  # about 50 ms of work
    assert chunk_size(10_000, 2, 5.0, chunk_seconds=0.05) == 1  # slow files go one by one
    assert chunk_size(10_000, 2, 0.001, chunk_seconds=0.0) == 1
