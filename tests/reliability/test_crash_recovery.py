"""The real service, killed with SIGKILL at many moments and restarted on its data.

One data directory lives through a dozen lives of ``pdfbatch serve``. Each life sets up
a moment (an upload half sent, attempts running, a backoff pending, a cancel under way,
a manual retry just accepted...), records what clients were told, and is killed with
SIGKILL. After every restart, and at the end, the test checks that every batch that was
accepted is there, that no succeeded file lost its result or ran again, that every file
ends terminal, that event sequences have no gaps or repeats, and that no temporary file
is left.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil

from actors.policy.model import AttemptOutcome, BatchEvent, FileState
from actors.storage.sqlite_store import SQLiteStore
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.service.app import DATABASE_NAME
from server.service.upload import GROUP_FILES
from tests.helpers.blob_checks import incoming_blobs, stored_blobs
from tests.helpers.crash_fixtures import WAIT, ServerLauncher, ServerProcess, watch_until
from tests.helpers.crash_processors import script
from tests.helpers.processes import eventually
from tests.helpers.reliability import REPORT
from tests.helpers.server_fixtures import upload

TERMINAL_BATCH = {
    pb.BATCH_STATE_SUCCEEDED,
    pb.BATCH_STATE_PARTIALLY_SUCCEEDED,
    pb.BATCH_STATE_FAILED,
    pb.BATCH_STATE_CANCELLED,
}
Condition = Callable[[pb.Batch], bool]


def count(state: pb.FileState.ValueType, at_least: int = 1) -> Condition:
    return lambda batch: sum(f.state == state for f in batch.files) >= at_least


def settled(batch: pb.Batch) -> bool:
    return batch.state in TERMINAL_BATCH


def completed(file: pb.FileStatus) -> list[pb.AttemptOutcome.ValueType]:
    """Outcomes of the file's attempts that no kill cut short."""
    return [a.outcome for a in file.attempts if a.outcome != pb.ATTEMPT_OUTCOME_INTERRUPTED]


def policy(**fields: object) -> pb.BatchPolicy:
    retry = fields.pop("retry", {})
    return pb.BatchPolicy(retry=pb.RetryPolicy(**retry), **fields)  # type: ignore[arg-type]


@dataclass
class Journal:
    """What clients were told, to hold the service to after each restart."""

    accepted: dict[str, str] = field(default_factory=dict)  # batch id -> scenario
    # (batch id, file id) -> attempts when it was seen SUCCEEDED, and its text.
    succeeded: dict[tuple[str, str], tuple[int, list[str]]] = field(default_factory=dict)
    seen_events: list[pb.WatchBatchResponse] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)
    left_behind: list[Path] = field(default_factory=list)
    # Batches whose deletion was cut off: there whole, or gone.
    uncertain: set[str] = field(default_factory=set)

    def submit(self, life: ServerProcess, name: str, *files: bytes, **spec: object) -> str:
        batch = life.stub.SubmitBatch(
            upload(
                pb.BatchSpec(display_name=name, **spec),
                [(f"{i}.pdf", d) for i, d in enumerate(files)],
            ),  # type: ignore[arg-type]
            timeout=WAIT,
        )
        self.accepted[batch.batch_id] = name
        return str(batch.batch_id)

    def observe(self, life: ServerProcess) -> None:
        """Record every succeeded file as clients see it now."""
        for batch_id in self.accepted:
            for file in life.client.get(batch_id).files:
                key = (batch_id, file.file_id)
                if file.state == pb.FILE_STATE_SUCCEEDED and key not in self.succeeded:
                    pages = life.client.result(batch_id, file.file_id).pages
                    self.succeeded[key] = (file.attempt_count, pages)

    def check(self, life: ServerProcess) -> None:
        """Everything accepted is there; nothing that succeeded ran again or lost its text."""
        listed = {batch.batch_id for batch in life.client.list()}
        assert set(self.accepted) <= listed <= set(self.accepted) | self.uncertain
        for batch_id in self.accepted:
            files = {f.file_id: f for f in life.client.get(batch_id).files}
            for (owner, file_id), (attempts, pages) in self.succeeded.items():
                if owner == batch_id:
                    assert files[file_id].state == pb.FILE_STATE_SUCCEEDED
                    assert files[file_id].attempt_count == attempts, (batch_id, file_id)
                    assert life.client.result(batch_id, file_id).pages == pages
        for path in self.left_behind:
            assert not path.exists(), f"left behind by the crash and not swept: {path}"


def kill(life: ServerProcess, journal: Journal, moment: str, data: Path) -> None:
    """Kill the service at ``moment``, remembering the temporary files it leaves."""
    journal.kills.append(moment)
    journal.left_behind += [*(data / "work").iterdir(), *(data / "blobs").rglob(".incoming-*")]
    # Rows of uploads being received are checked by what is left at the end.
    life.kill()


def restart(launcher: ServerLauncher, journal: Journal) -> ServerProcess:
    life = launcher.start()
    journal.check(life)
    return life


class HeldUpload:
    """A ``SubmitBatch`` stream that sends ``send`` bytes of its last file, then waits."""

    def __init__(self, life: ServerProcess, files: list[bytes], send: int) -> None:
        self._release = threading.Event()
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._run, args=(life, files, send))
        self._thread.start()

    def _requests(self, files: list[bytes], send: int) -> Iterator[pb.SubmitBatchRequest]:
        yield pb.SubmitBatchRequest(spec=pb.BatchSpec(display_name="never accepted"))
        for index, data in enumerate(files):
            yield pb.SubmitBatchRequest(
                file=pb.FileHeader(name=f"{index}.pdf", size_bytes=len(data))
            )
            last = index == len(files) - 1
            yield pb.SubmitBatchRequest(chunk=data[:send] if last else data)
        self._release.wait(WAIT)

    def _run(self, life: ServerProcess, files: list[bytes], send: int) -> None:
        try:
            life.stub.SubmitBatch(self._requests(files, send), timeout=WAIT)
        except grpc.RpcError as error:
            self.error = error

    def finish(self) -> None:
        self._release.set()
        self._thread.join(WAIT)
        assert self.error is not None, "an upload cut off by the crash cannot have succeeded"


def wait_for(condition: Callable[[], bool]) -> None:
    """Wait for a file to appear on disk: the server announces temp files to nobody."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        threading.Event().wait(0.01)


def test_accepted_batches_survive_sigkill_at_every_moment(launcher: ServerLauncher) -> None:
    began = time.monotonic()
    data = launcher.data_dir
    journal = Journal()
    seen = journal.seen_events
    life = launcher.start()

    # 1. Attempts running.
    steady = journal.submit(life, "steady", *[script(b"ok")] * 3)
    watch_until(life.stub, steady, settled, seen)
    sleepy = journal.submit(
        life, "sleepy", *[script(b"sleep:0.5")] * 4, policy=policy(max_concurrency=2)
    )
    watch_until(life.stub, sleepy, count(pb.FILE_STATE_RUNNING, 2), seen)
    journal.observe(life)
    kill(life, journal, "mid-attempt", data)

    # 2. An upload half sent: never acknowledged, so never a batch.
    life = restart(launcher, journal)
    # Bigger than a small blob: a file being written, which the test can see.
    held = HeldUpload(life, [script(b"ok" * 150_000)], send=60_000)
    wait_for(lambda: any(incoming_blobs(data / "blobs")))
    kill(life, journal, "mid-upload", data)
    held.finish()

    # 3. Acknowledged, then killed at once.
    life = restart(launcher, journal)
    acked = journal.submit(life, "acked", script(b"ok"), script(b"ok"))
    kill(life, journal, "right-after-accept", data)

    # 4. Automatic retries waiting out their backoff.
    life = restart(launcher, journal)
    retry = {"initial_backoff": {"seconds": 2}, "jitter": pb.JITTER_NONE}
    flaky = journal.submit(
        life,
        "flaky",
        script(b"crash-until:3"),
        script(b"crash-until:3"),
        policy=policy(retry=retry | {"max_attempts": 5}),
    )
    due = watch_until(life.stub, flaky, count(pb.FILE_STATE_BACKOFF), seen)
    backoff_due = {
        f.file_id: f.next_attempt_time.ToNanoseconds() / 1e9
        for f in due.files
        if f.state == pb.FILE_STATE_BACKOFF
    }
    journal.observe(life)
    kill(life, journal, "mid-retry-backoff", data)

    # 5. A cancel under way, its attempts hung.
    life = restart(launcher, journal)
    hung = journal.submit(life, "hung", *[script(b"hang")] * 3, policy=policy(max_concurrency=3))
    # Both workers run one; the third attempt is handed over and waits for a worker.
    watch_until(life.stub, hung, count(pb.FILE_STATE_RUNNING, 2), seen)
    cancelling = threading.Thread(target=lambda: _quietly(lambda: life.client.cancel(hung)))
    cancelling.start()
    watch_until(
        life.stub,
        hung,
        lambda b: b.state in (pb.BATCH_STATE_CANCELLING, pb.BATCH_STATE_CANCELLED),
        seen,
    )
    kill(life, journal, "mid-cancel", data)
    cancelling.join(WAIT)

    # 6. Many small files, some succeeded, some running.
    life = restart(launcher, journal)
    many = journal.submit(
        life, "many", *[script(b"sleep:0.05")] * 24, policy=policy(max_concurrency=4)
    )
    watch_until(life.stub, many, count(pb.FILE_STATE_SUCCEEDED, 6), seen)
    journal.observe(life)
    kill(life, journal, "mid-batch-after-successes", data)

    # 7. While the restarted service resumes its batches.
    life = restart(launcher, journal)
    kill(life, journal, "during-resume", data)

    # 8. A manual retry just accepted.
    life = restart(launcher, journal)
    mixed = journal.submit(
        life, "mixed", script(b"pdf-error"), script(b"ok"), policy=policy(retry={"max_attempts": 1})
    )
    watch_until(life.stub, mixed, settled, seen)
    journal.observe(life)
    life.client.retry(mixed, ["f00001"])
    kill(life, journal, "right-after-manual-retry", data)

    # 9. An attempt ran out of time; its retry is waiting.
    life = restart(launcher, journal)
    slow = journal.submit(
        life,
        "slow",
        script(b"sleep:5"),
        policy=policy(
            file_timeout={"nanos": 300_000_000},
            retry={"initial_backoff": {"seconds": 1}, "max_attempts": 2},
        ),
    )
    watch_until(life.stub, slow, count(pb.FILE_STATE_BACKOFF), seen)
    kill(life, journal, "after-timeout", data)

    # 10. The second file of an upload half sent.
    life = restart(launcher, journal)
    # The first file is held in memory (a small one), the second a file being written.
    held = HeldUpload(life, [script(b"ok"), script(b"ok" * 150_000)], send=70_000)
    wait_for(lambda: len(incoming_blobs(data / "blobs")) >= 1)
    kill(life, journal, "mid-upload-second-file", data)
    held.finish()

    # 11. A delete in flight: the batch is there whole or gone whole.
    life = restart(launcher, journal)
    doomed = journal.submit(life, "doomed", script(b"ok"))
    watch_until(life.stub, doomed, settled, seen)
    life.stub.DeleteBatch.future(pb.DeleteBatchRequest(batch_id=doomed))
    kill(life, journal, "mid-delete", data)
    del journal.accepted[doomed]
    journal.uncertain.add(doomed)

    # The last life: everything settles, then a clean stop.
    life = restart(launcher, journal)
    _check_deleted_whole_or_not_at_all(life, doomed)
    for batch_id in journal.accepted:
        watch_until(life.stub, batch_id, settled, seen)
    final = {batch_id: life.client.get(batch_id) for batch_id in journal.accepted}
    journal.observe(life)
    life.stop()
    elapsed = time.monotonic() - began

    assert len(journal.kills) >= 10
    assert {b.batch_id for b in final.values()} == set(journal.accepted)
    for batch in final.values():
        assert all(
            f.state in (pb.FILE_STATE_SUCCEEDED, pb.FILE_STATE_FAILED, pb.FILE_STATE_CANCELLED)
            for f in batch.files
        )
    assert final[hung].state == pb.BATCH_STATE_CANCELLED
    assert final[acked].state == pb.BATCH_STATE_SUCCEEDED
    assert final[many].counts.succeeded == 24
    retried, untouched = final[mixed].files
    assert (retried.state, retried.manual_retries) == (pb.FILE_STATE_FAILED, 1)
    # The first attempt, then the retry's (which the kills may have cut short first).
    assert completed(retried) == [pb.ATTEMPT_OUTCOME_FAILED] * 2
    assert (untouched.state, untouched.attempt_count) == (pb.FILE_STATE_SUCCEEDED, 1)
    (timed_out,) = final[slow].files
    assert (timed_out.state, timed_out.error.code) == (pb.FILE_STATE_FAILED, "PROCESSING_TIMEOUT")
    assert completed(timed_out) == [pb.ATTEMPT_OUTCOME_FAILED] * 2, "the budget: 2 attempts"
    _check_history(data, journal, final=final, backoff_due=backoff_due, flaky=flaky, sleepy=sleepy)
    assert incoming_blobs(data / "blobs") == []
    assert not list((data / "work").iterdir())
    cancelled_at_restart = [a.outcome for f in final[hung].files for a in f.attempts].count(
        pb.ATTEMPT_OUTCOME_INTERRUPTED
    )
    print(
        f"{len(journal.kills)} kills in {elapsed:.1f} s: {', '.join(journal.kills)}; "
        f"attempts the restart found cancelling: {cancelled_at_restart}"
    )


def _quietly(call: Callable[[], object]) -> None:
    """Run a call the kill may cut off."""
    code = grpc.StatusCode.OK
    try:
        call()
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)


def _check_deleted_whole_or_not_at_all(life: ServerProcess, batch_id: str) -> None:
    code = grpc.StatusCode.OK
    try:
        batch = life.client.get(batch_id)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
    if code is grpc.StatusCode.NOT_FOUND:
        return
    assert batch.state == pb.BATCH_STATE_SUCCEEDED
    assert life.client.result(batch_id, "f00001").pages == ["ok"]
    life.client.delete(batch_id)


def _check_history(
    data: Path,
    journal: Journal,
    *,
    final: dict[str, pb.Batch],
    backoff_due: dict[str, float],
    flaky: str,
    sleepy: str,
) -> None:
    """The stored history: complete, in order, one end per attempt, as watchers saw it."""
    store = SQLiteStore(data / DATABASE_NAME)
    try:
        stored: dict[tuple[str, int], BatchEvent] = {}
        for batch_id, batch in final.items():
            events = store.events_after(batch_id, 0)
            assert [e.sequence for e in events] == list(range(1, batch.sequence + 1)), batch_id
            ends = [
                (e.file.file_id, len(e.file.attempts))
                for e in events
                if e.file is not None and e.file.state.terminal
            ]
            assert len(ends) == len(set(ends)), f"an attempt ended twice in {batch_id}"
            stored |= {(batch_id, e.sequence): e for e in events}
        for event in journal.seen_events:
            if event.HasField("file") and event.batch_id in final:
                twin = stored[(event.batch_id, event.sequence)]
                assert twin.file is not None
                assert (twin.file.file_id, len(twin.file.attempts)) == (
                    event.file.file_id,
                    event.file.attempt_count,
                )
        view = store.load(flaky)
        assert view is not None
        for file in view.files:
            assert file.state is FileState.SUCCEEDED
            if file.file_id in backoff_due:
                # The kill came while it waited out the backoff of its first failure.
                failed = [a.outcome for a in file.attempts].index(AttemptOutcome.FAILED)
                next_start = file.attempts[failed + 1].started_at
                assert next_start >= backoff_due[file.file_id] - 0.01, "a backoff was cut short"
        cut_short = store.load(sleepy)
        assert cut_short is not None
        interrupted = [
            a
            for f in cut_short.files
            for a in f.attempts
            if a.outcome is AttemptOutcome.INTERRUPTED
        ]
        assert interrupted, "the attempts the kill cut short are recorded as interrupted"
        assert all(f.round_failures == 0 for f in cut_short.files), "interruptions are no failures"
    finally:
        store.close()


def test_nothing_the_service_started_outlives_a_kill_of_the_service_alone(
    launcher: ServerLauncher,
) -> None:
    life = launcher.start()
    batch = life.stub.SubmitBatch(
        upload(pb.BatchSpec(), [("a.pdf", script(b"hang")), ("b.pdf", script(b"hang"))]),
        timeout=WAIT,
    )
    watch_until(life.stub, batch.batch_id, count(pb.FILE_STATE_RUNNING, 2))
    started = psutil.Process(life.process.pid).children(recursive=True)
    assert len(started) >= 3, "the fork server and two busy workers (and the tracker)"

    # The service alone, as an OOM killer or `kill -9 PID` would: not its group.
    os.kill(life.process.pid, signal.SIGKILL)
    life.process.wait(WAIT)
    killed_at = time.monotonic()

    # Before the fix, the fork server and the busy workers kept each other alive for as
    # long as the attempts ran (minutes); now they go within a fraction of a second.
    eventually(lambda: not [p for p in started if _running(p)], timeout=10)
    gone_in = time.monotonic() - killed_at
    REPORT.figure("children gone after kill -9 of the service", gone_in, "s")
    life.kill()  # the group: nothing left to kill, but the channel is closed


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _upload_rows(database: Path) -> tuple[int, int]:
    """(uploads in progress, their files) as the service's database holds them."""
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        uploads, files = db.execute(
            "SELECT COUNT(DISTINCT batch_id), COUNT(files.file_id) FROM batches "
            "LEFT JOIN files USING (batch_id) WHERE uploading = 1"
        ).fetchone()
    return int(uploads), int(files)


def test_an_upload_cut_short_by_a_kill_is_dropped_by_the_next_start(
    launcher: ServerLauncher,
) -> None:
    life = launcher.start()
    database, blobs = launcher.data_dir / DATABASE_NAME, launcher.data_dir / "blobs"
    # More than a group of files (GROUP_FILES), so that some are stored before the kill.
    count = GROUP_FILES + 20
    held = HeldUpload(life, [script(b"ok:%d" % n) for n in range(count)], send=2)
    eventually(lambda: _upload_rows(database)[1] > 0)
    # The rows first: the upload goes on meanwhile, and a group's blobs are placed
    # before its files are stored, so the blobs read after are at least as many.
    stored = _upload_rows(database)[1]
    assert len(stored_blobs(blobs)) >= stored

    life.kill()
    held.finish()
    life = launcher.start()

    # Deleted after the restart resumed the batches, while it serves.
    eventually(lambda: _upload_rows(database) == (0, 0))
    eventually(lambda: stored_blobs(blobs) == [])
    assert list(life.client.list()) == []
    life.stop()
