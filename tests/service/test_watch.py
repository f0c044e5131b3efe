"""WatchBatch: snapshots, replay, resume after a drop, expiry, and slow watchers."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from actors.policy.book import BatchBook
from actors.policy.model import (
    BatchRecord,
    BatchState,
    BatchSummary,
    BatchView,
    FileRecord,
    FileState,
)
from actors.policy.refusals import BatchNotFound, ServiceClosing
from actors.policy.rules import BatchPolicy
from actors.storage.store import MemoryStore
from server.client.api import Client, events_of
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from server.service.watch import WatchHub
from server.wire import convert
from server.wire.errors import WireError
from tests.helpers.processes import eventually
from tests.helpers.server_fixtures import (
    WAIT,
    RunningServer,
    ServerFactory,
    TcpProxy,
    make_pdf,
    many_pages,
    refused,
)


def _contiguous(sequences: list[int]) -> bool:
    return all(b == a + 1 for a, b in itertools.pairwise(sequences))


def _slow_batch(server: RunningServer, files: int = 4) -> pb.Batch:
    """A batch that takes a while: one file at a time, 300 pages each."""
    pages = many_pages(300)
    return server.submit(
        *((f"{n}.pdf", pages) for n in range(files)), policy=pb.BatchPolicy(max_concurrency=1)
    )


# Through the server ------------------------------------------------------------------


def test_watch_starts_with_a_snapshot_and_ends_after_the_terminal_state(
    server: RunningServer,
) -> None:
    # A file of 300 pages keeps the batch running while the watch opens.
    batch = server.submit(("a.pdf", many_pages(300)), ("b.pdf", b"junk"))

    events = server.settle(batch.batch_id)

    first, *changes = events
    assert first.WhichOneof("change") == "snapshot"
    assert first.snapshot.batch_id == batch.batch_id
    assert first.sequence == first.snapshot.sequence
    assert first.counts == first.snapshot.counts
    assert first.snapshot.file_count == 2
    assert all(e.counts.ByteSize() for e in changes), "every event carries the counts"
    assert changes[-1].counts.succeeded == changes[-1].counts.failed == 1
    assert _contiguous([e.sequence for e in events])
    assert changes[-1].WhichOneof("change") == "batch_state_change"
    assert changes[-1].batch_state_change.state == pb.BATCH_STATE_PARTIALLY_SUCCEEDED
    assert all(e.batch_id == batch.batch_id for e in events)
    # Screened out without a worker, the junk may have failed before the snapshot.
    failed = [e.file for e in changes if e.file.state == pb.FILE_STATE_FAILED]
    assert not first.snapshot.files, "a snapshot carries counts, not files"
    if first.snapshot.counts.failed:
        failed += server.client.files(batch.batch_id, states=[pb.FILE_STATE_FAILED])
    assert [(f.name, f.error.code) for f in failed] == [("b.pdf", "NOT_A_PDF")]
    # Watching a settled batch yields its snapshot and ends.
    assert [e.WhichOneof("change") for e in server.settle(batch.batch_id)] == ["snapshot"]


def test_watch_after_n_replays_every_later_event(server: RunningServer) -> None:
    batch = server.submit(("a.pdf", make_pdf("a")), ("b.pdf", make_pdf("b")))
    everything = server.settle(batch.batch_id)
    last = everything[-1].sequence

    replayed = list(
        server.stub.WatchBatch(
            pb.WatchBatchRequest(batch_id=batch.batch_id, after_sequence=2), timeout=WAIT
        )
    )

    assert [e.sequence for e in replayed] == list(range(3, last + 1))
    assert replayed[-1].batch_state == pb.BATCH_STATE_SUCCEEDED
    at_end = server.stub.WatchBatch(
        pb.WatchBatchRequest(batch_id=batch.batch_id, after_sequence=last), timeout=WAIT
    )
    assert list(at_end) == []


def test_a_dropped_stream_resumes_from_its_last_sequence(server: RunningServer) -> None:
    batch = _slow_batch(server)
    stream = server.stub.WatchBatch(pb.WatchBatchRequest(batch_id=batch.batch_id), timeout=WAIT)
    seen = [next(stream), next(stream)]
    stream.cancel()

    resumed = server.stub.WatchBatch(
        pb.WatchBatchRequest(batch_id=batch.batch_id, after_sequence=seen[-1].sequence),
        timeout=WAIT,
    )
    seen += list(resumed)

    assert _contiguous([e.sequence for e in seen])
    assert seen[-1].batch_state == pb.BATCH_STATE_SUCCEEDED
    stored = server.store.events_after(batch.batch_id, seen[0].sequence)
    assert [e.sequence for e in seen[1:]] == [e.sequence for e in stored]


def test_the_client_reconnects_after_a_network_drop_and_misses_nothing(
    server: RunningServer, proxy_to: Callable[[str], TcpProxy]
) -> None:
    proxy = proxy_to(server.address)
    batch = _slow_batch(server)
    seen: list[pb.WatchBatchResponse] = []
    with Client(proxy.address) as client:
        for event in client.watch(batch.batch_id):
            seen.append(event)
            if len(seen) == 3:
                proxy.drop()

    assert proxy.accepted >= 2
    assert seen[0].WhichOneof("change") == "snapshot"
    assert _contiguous([e.sequence for e in seen])
    assert seen[-1].batch_state == pb.BATCH_STATE_SUCCEEDED


def test_a_resume_point_older_than_the_history_is_refused(serve: ServerFactory) -> None:
    server = serve(max_events_per_batch=3)
    # Files enough that the batch's history outgrows what is kept, however its starts
    # and outcomes share events (a quick file goes from PENDING to its outcome in one).
    batch = server.submit(*((f"{n}.pdf", make_pdf(str(n))) for n in range(6)))
    last = server.settle(batch.batch_id)[-1].sequence
    assert last > 1 + 3

    error = refused(
        lambda: list(
            server.stub.WatchBatch(
                pb.WatchBatchRequest(batch_id=batch.batch_id, after_sequence=1), timeout=WAIT
            )
        )
    )

    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "WATCH_HISTORY_EXPIRED",
    )
    assert error.metadata == {"afterSequence": "1"}
    kept = list(
        server.stub.WatchBatch(
            pb.WatchBatchRequest(batch_id=batch.batch_id, after_sequence=last - 3), timeout=WAIT
        )
    )
    assert [e.sequence for e in kept] == [last - 2, last - 1, last]
    # The client starts over from a fresh snapshot rather than leave a gap.
    restarted = list(server.client.watch(batch.batch_id, after_sequence=1))
    assert [e.WhichOneof("change") for e in restarted] == ["snapshot"]


def test_a_resume_point_ahead_of_the_batch_is_out_of_range(server: RunningServer) -> None:
    batch = server.submit(("a.pdf", make_pdf("a")))
    last = server.settle(batch.batch_id)[-1].sequence

    error = refused(
        lambda: list(
            server.stub.WatchBatch(
                pb.WatchBatchRequest(batch_id=batch.batch_id, after_sequence=last + 5),
                timeout=WAIT,
            )
        )
    )

    assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, "WATCH_SEQUENCE_AHEAD")


def test_follow_keeps_watching_through_a_retry(server: RunningServer) -> None:
    batch = server.submit(("junk.pdf", b"junk"))
    server.settle(batch.batch_id)
    stream = server.stub.WatchBatch(
        pb.WatchBatchRequest(batch_id=batch.batch_id, follow=True), timeout=WAIT
    )
    assert next(stream).snapshot.state == pb.BATCH_STATE_FAILED

    server.client.retry(batch.batch_id)
    states = []
    for event in stream:
        if event.WhichOneof("change") == "batch_state_change":
            states.append(event.batch_state_change.state)
            if event.batch_state_change.state == pb.BATCH_STATE_FAILED:
                break
    stream.cancel()

    assert states == [pb.BATCH_STATE_RUNNING, pb.BATCH_STATE_FAILED]
    eventually(lambda: server.service.hub.open_watches == 0)


def test_deleting_a_followed_batch_ends_its_watch(server: RunningServer) -> None:
    batch = server.submit(("a.pdf", make_pdf("a")))
    server.settle(batch.batch_id)
    stream = server.stub.WatchBatch(
        pb.WatchBatchRequest(batch_id=batch.batch_id, follow=True), timeout=WAIT
    )
    next(stream)

    server.client.delete(batch.batch_id)

    error = refused(lambda: next(stream))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "BATCH_NOT_FOUND")


def test_a_client_deadline_ends_the_watch_on_both_sides(server: RunningServer) -> None:
    batch = server.submit(("a.pdf", make_pdf("a")))
    server.settle(batch.batch_id)
    stream = server.stub.WatchBatch(
        pb.WatchBatchRequest(batch_id=batch.batch_id, follow=True), timeout=0.5
    )

    with pytest.raises(grpc.RpcError) as raised:
        list(stream)

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    eventually(lambda: server.service.hub.open_watches == 0)


def test_too_many_watches_are_refused(serve: ServerFactory) -> None:
    server = serve(max_watchers=1)
    batch = server.submit(("a.pdf", make_pdf("a")))
    server.settle(batch.batch_id)
    first = server.stub.WatchBatch(pb.WatchBatchRequest(batch_id=batch.batch_id, follow=True))
    next(first)

    error = refused(lambda: server.settle(batch.batch_id))

    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHERS")
    assert error.retry_delay == 5.0
    first.cancel()


def test_open_watches_hold_no_call_thread(serve: ServerFactory) -> None:
    # 12 threads of the call pool are free beyond the long calls (2 + 1 + 8 + 12 = 23),
    # 30 watches are open: each held a thread of its own in the threaded server, and
    # then the calls below waited behind them for good.
    server = serve(rpc_threads=23, max_watchers=40, max_uploads=2, max_exports=1)
    batch = server.submit(("a.pdf", make_pdf("a")))
    server.settle(batch.batch_id)
    watches = [
        server.stub.WatchBatch(
            pb.WatchBatchRequest(batch_id=batch.batch_id, follow=True), timeout=WAIT
        )
        for _ in range(30)
    ]
    try:
        assert all(next(watch).HasField("snapshot") for watch in watches)

        another = server.submit(("b.pdf", make_pdf("b")))
        server.settle(another.batch_id)
        got = server.stub.GetBatch(pb.GetBatchRequest(batch_id=batch.batch_id), timeout=WAIT)
        assert got.batch_id == batch.batch_id
    except grpc.RpcError as error:
        raise AssertionError(f"a call waited behind the watches: {error}") from error
    finally:
        for watch in watches:
            watch.cancel()
    eventually(lambda: server.service.hub.open_watches == 0)


# Coalescing: several events per message ---------------------------------------------

# A client that reads nothing lets at most this many bytes of the stream wait for it:
# past them the server's send blocks, as it would for a client on a slow link.
_SMALL_WINDOW = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]


def _flattened(messages: list[pb.WatchBatchResponse]) -> list[pb.WatchBatchResponse]:
    return [event for message in messages for event in events_of(message)]


def _stored_events(server: RunningServer, batch_id: str, after: int) -> list[pb.WatchBatchResponse]:
    return [convert.event_to_proto(e) for e in server.store.events_after(batch_id, after)]


def test_a_watcher_that_falls_behind_gets_the_waiting_events_together_each_once_in_order(
    server: RunningServer,
) -> None:
    # Files are processed as they arrive: those done before the watch's snapshot are in
    # it, not in its events, so the batch is large enough to leave 30 events after it.
    batch = server.submit(*((f"{n}.pdf", make_pdf(f"file {n}")) for n in range(100)))
    with grpc.insecure_channel(server.address, options=_SMALL_WINDOW) as channel:
        stream = batch_pb2_grpc.BatchServiceStub(channel).WatchBatch(
            pb.WatchBatchRequest(batch_id=batch.batch_id, max_events_per_message=256),
            timeout=WAIT,
        )
        snapshot = next(stream)
        # The client reads nothing more until the batch is over.
        eventually(lambda: server.store.batch_summary(batch.batch_id).batch.state.terminal)
        messages = list(stream)

    events = _flattened(messages)
    assert events == _stored_events(server, batch.batch_id, snapshot.sequence)
    assert [e.sequence for e in events] == list(
        range(snapshot.sequence + 1, events[-1].sequence + 1)
    )
    assert events[-1].batch_state == pb.BATCH_STATE_SUCCEEDED
    # A file makes an event or two; the stalled watch got them in far fewer messages.
    assert len(events) >= 30
    assert len(messages) <= len(events) // 3
    for message in messages:
        # Each message is its newest event, carrying the batch's state as of it.
        assert message.sequence == events_of(message)[-1].sequence
        assert all(not e.earlier_events for e in message.earlier_events)


def test_a_replay_comes_in_messages_of_at_most_the_events_asked_for(
    server: RunningServer,
) -> None:
    batch = server.submit(*((f"{n}.pdf", make_pdf(f"file {n}")) for n in range(4)))
    server.settle(batch.batch_id)

    messages = list(
        server.stub.WatchBatch(
            pb.WatchBatchRequest(
                batch_id=batch.batch_id, after_sequence=1, max_events_per_message=4
            ),
            timeout=WAIT,
        )
    )

    events = _flattened(messages)
    assert events == _stored_events(server, batch.batch_id, 1)
    sizes = [len(events_of(m)) for m in messages]
    assert sizes == [4] * (len(events) // 4) + ([len(events) % 4] if len(events) % 4 else [])
    # Without asking, one event per message, as before.
    single = list(
        server.stub.WatchBatch(
            pb.WatchBatchRequest(batch_id=batch.batch_id, after_sequence=1), timeout=WAIT
        )
    )
    assert single == events


def test_the_service_caps_the_events_per_message_and_refuses_a_negative_count(
    serve: ServerFactory,
) -> None:
    server = serve(watch_max_events_per_message=3)
    batch = server.submit(*((f"{n}.pdf", make_pdf(f"file {n}")) for n in range(3)))
    server.settle(batch.batch_id)

    messages = list(
        server.stub.WatchBatch(
            pb.WatchBatchRequest(
                batch_id=batch.batch_id, after_sequence=1, max_events_per_message=256
            ),
            timeout=WAIT,
        )
    )
    error = refused(
        lambda: list(
            server.stub.WatchBatch(
                pb.WatchBatchRequest(batch_id=batch.batch_id, max_events_per_message=-1),
                timeout=WAIT,
            )
        )
    )

    assert max(len(events_of(m)) for m in messages) == 3
    assert _flattened(messages) == _stored_events(server, batch.batch_id, 1)
    assert (error.code, error.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_EVENTS_PER_MESSAGE",
    )


# The hub on its own, driven by a store ----------------------------------------------


def _new_batch(store: MemoryStore, files: int, batch_id: str = "b1") -> BatchBook:
    view = BatchView(
        BatchRecord(batch_id, "", BatchPolicy(), BatchState.PENDING, 0.0, 0.0),
        tuple(FileRecord(f"f{n}", f"{n}.pdf", "0" * 64, 1) for n in range(files)),
    )
    store.create_batch(view)
    return BatchBook(view)


def _run_batch(store: MemoryStore, book: BatchBook) -> None:
    """Commit a whole run, one change per commit: 2 events per file, 2 for the batch."""
    for commit in _commits(store, book):
        commit()


def _drain(items: Iterator[object]) -> list[int]:
    return [item.sequence for item in items]  # type: ignore[attr-defined]


def test_a_stalled_watcher_never_blocks_commits_and_catches_up_from_the_store() -> None:
    store = MemoryStore()
    hub = WatchHub(store, queue_size=2)
    book = _new_batch(store, files=10)
    stalled = iter(hub.open("b1", 0, follow=False))
    other = iter(hub.open("b1", 0, follow=False))
    assert isinstance(next(stalled), BatchSummary)
    assert isinstance(next(other), BatchSummary)

    # Nobody reads while 22 events are committed on this very thread: a listener that
    # waited for a reader would hang here.
    _run_batch(store, book)

    assert _drain(other) == list(range(1, 23))
    assert _drain(stalled) == list(range(1, 23))
    assert hub.open_watches == 0
    hub.close()


def test_a_watcher_that_falls_behind_the_history_gets_an_error_not_a_gap() -> None:
    store = MemoryStore(max_events_per_batch=3)
    hub = WatchHub(store, queue_size=2)
    book = _new_batch(store, files=5)
    stalled = iter(hub.open("b1", 0, follow=False))
    next(stalled)

    _run_batch(store, book)

    with pytest.raises(WireError) as raised:
        _drain(stalled)
    assert raised.value.reason == "WATCH_HISTORY_EXPIRED"
    hub.close()


def test_deletion_and_shutdown_end_open_watches() -> None:
    store = MemoryStore()
    hub = WatchHub(store)
    _new_batch(store, files=1)
    _new_batch(store, files=1, batch_id="b2")
    deleted = iter(hub.open("b1", 0, follow=True))
    closing = iter(hub.open("b2", 0, follow=True))
    next(deleted)
    next(closing)
    results: dict[str, BaseException] = {}

    def read(name: str, items: Iterator[object]) -> None:
        try:
            list(items)
        except (BatchNotFound, ServiceClosing) as exc:
            results[name] = exc

    readers = [
        threading.Thread(target=read, args=("deleted", deleted)),
        threading.Thread(target=read, args=("closing", closing)),
    ]
    for reader in readers:
        reader.start()
    hub.batch_deleted("b1")
    hub.close()
    for reader in readers:
        reader.join(WAIT)

    assert isinstance(results["deleted"], BatchNotFound)
    assert isinstance(results["closing"], ServiceClosing)
    with pytest.raises(ServiceClosing):
        hub.open("b1", 0, follow=False)


class _CountingLoop(asyncio.SelectorEventLoop):
    """Counts the calls made into it from other threads."""

    def __init__(self) -> None:
        super().__init__()
        self.calls_from_threads = 0

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:
        self.calls_from_threads += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def test_watches_on_an_event_loop_are_woken_once_per_commit_whatever_their_number() -> None:
    store = MemoryStore()
    hub = WatchHub(store)
    book = _new_batch(store, files=5)
    loop = _CountingLoop()
    reads = ThreadPoolExecutor(max_workers=1)

    async def blocking(function: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(reads, function)

    async def watch_all() -> tuple[list[list[bytes]], list[int]]:
        streams = [hub.open("b1", 0, follow=False).stream(blocking) for _ in range(10)]
        snapshots = [await anext(stream) for stream in streams]
        assert all(_events([s])[0].WhichOneof("change") == "snapshot" for s in snapshots)
        sending = asyncio.gather(*(_rest(stream) for stream in streams))
        calls = []
        for commit in _commits(store, book):
            # Each commit, made on another thread, finds all ten waiting on this loop.
            while _waiting(hub, "b1") < 10:
                await asyncio.sleep(0.001)
            before = loop.calls_from_threads
            await asyncio.get_running_loop().run_in_executor(None, commit)
            calls.append(loop.calls_from_threads - before)
        return await sending, calls

    try:
        sent, calls = loop.run_until_complete(watch_all())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
        reads.shutdown()
    hub.close()

    stored = [convert.event_to_proto(e).SerializeToString() for e in store.events_after("b1", 0)]
    assert all(frames == stored for frames in sent)
    assert hub.open_watches == 0
    # One call wakes the ten, one more says the commit's thread is done.
    assert calls == [2] * 12


def _waiting(hub: WatchHub, batch_id: str) -> int:
    feed = hub._feeds[batch_id]
    with feed.changed:
        return len(feed.sleepers)


def _commits(store: MemoryStore, book: BatchBook) -> Iterator[Callable[[], None]]:
    """The commits of :func:`_run_batch`, each to be made when the caller wants."""

    def batch(state: BatchState, at: float) -> Callable[[], None]:
        def commit() -> None:
            book.set_batch(state, at)
            store.commit(book.take_changes(), {})

        return commit

    def file(file_id: str, state: FileState) -> Callable[[], None]:
        def commit() -> None:
            book.set_file(file_id, state, 2.0)
            store.commit(book.take_changes(), {})

        return commit

    yield batch(BatchState.RUNNING, 1.0)
    for record in book.files():
        for state in (FileState.RUNNING, FileState.SUCCEEDED):
            yield file(record.file_id, state)
    yield batch(BatchState.SUCCEEDED, 3.0)


async def _rest(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [frame async for frame in stream]


def _events(frames: list[bytes]) -> list[pb.WatchBatchResponse]:
    return [pb.WatchBatchResponse.FromString(frame) for frame in frames]


def test_every_watcher_sends_the_same_bytes_for_an_event_serialized_once() -> None:
    store = MemoryStore()
    hub = WatchHub(store)
    book = _new_batch(store, files=10)
    watches = [hub.open("b1", 0, follow=False).frames() for _ in range(3)]
    snapshots = [pb.WatchBatchResponse.FromString(next(frames)) for frames in watches]

    _run_batch(store, book)
    sent = [list(frames) for frames in watches]

    assert all(s.WhichOneof("change") == "snapshot" for s in snapshots)
    first, *others = sent
    assert [e.sequence for e in _events(first)] == list(range(1, 23))
    stored = store.events_after("b1", 0)
    assert first == [convert.event_to_proto(e).SerializeToString() for e in stored]
    for other in others:
        assert all(mine is theirs for mine, theirs in zip(first, other, strict=True))
    assert hub.open_watches == 0
    hub.close()


def test_a_watcher_stalled_while_sending_does_not_delay_the_others() -> None:
    store = MemoryStore()
    hub = WatchHub(store, queue_size=2)
    book = _new_batch(store, files=10)
    stalled = hub.open("b1", 0, follow=False).frames()
    other = hub.open("b1", 0, follow=False).frames()
    next(stalled)
    next(other)
    sending, release = threading.Event(), threading.Event()
    received: dict[str, list[bytes]] = {"stalled": [], "other": []}

    def stall(frames: Iterator[bytes]) -> None:
        for frame in frames:
            received["stalled"].append(frame)
            sending.set()
            release.wait(WAIT)  # its client reads nothing, so its send never returns

    def read(frames: Iterator[bytes]) -> None:
        received["other"].extend(frames)

    stalled_reader = threading.Thread(target=stall, args=(stalled,))
    stalled_reader.start()
    book.set_batch(BatchState.RUNNING, 1.0)
    store.commit(book.take_changes(), {})
    assert sending.wait(WAIT)
    other_reader = threading.Thread(target=read, args=(other,))
    other_reader.start()
    for record in book.files():
        for state in (FileState.RUNNING, FileState.SUCCEEDED):
            book.set_file(record.file_id, state, 2.0)
            store.commit(book.take_changes(), {})
    book.set_batch(BatchState.SUCCEEDED, 3.0)
    store.commit(book.take_changes(), {})

    other_reader.join(WAIT)
    assert not other_reader.is_alive()
    assert len(received["stalled"]) == 1
    release.set()
    stalled_reader.join(WAIT)
    # Overflowed meanwhile, it caught up from the store: nothing missed, nothing twice.
    for name in ("stalled", "other"):
        assert [e.sequence for e in _events(received[name])] == list(range(1, 23)), name
    hub.close()


def test_a_stalled_watcher_sends_what_waited_in_one_message_of_the_shared_frames() -> None:
    store = MemoryStore()
    hub = WatchHub(store)
    book = _new_batch(store, files=10)
    one_by_one = hub.open("b1", 0, follow=False).frames()
    coalesced = hub.open("b1", 0, follow=False, events_per_message=100).frames()
    next(one_by_one)
    next(coalesced)

    _run_batch(store, book)
    singles, (message,) = list(one_by_one), list(coalesced)

    stored = [convert.event_to_proto(e) for e in store.events_after("b1", 0)]
    assert events_of(pb.WatchBatchResponse.FromString(message)) == stored
    # The same bytes each event was serialized to, joined: nothing converted again.
    assert all(frame in message for frame in singles)
    assert hub.open_watches == 0
    hub.close()


def test_a_message_ends_before_its_bytes_would_pass_the_budget() -> None:
    store = MemoryStore()
    hub = WatchHub(store, max_message_bytes=300)
    book = _new_batch(store, files=10)
    watch = hub.open("b1", 0, follow=False, events_per_message=100).frames()
    next(watch)

    _run_batch(store, book)
    frames = list(watch)

    messages = [pb.WatchBatchResponse.FromString(frame) for frame in frames]
    assert 1 < len(messages) < 22
    assert all(len(frame) <= 300 for frame in frames)
    assert [e.sequence for m in messages for e in events_of(m)] == list(range(1, 23))
    hub.close()
