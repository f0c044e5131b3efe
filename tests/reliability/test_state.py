"""State-machine tests (issue #9): random sequences of commands, invariants after each.

Two machines. :class:`BookMachine` drives the pure :class:`~actors.policy.book.BatchBook`
and runs many examples fast. :class:`RuntimeMachine` drives the real orchestration
(runtime, manager, supervisors, file actors, store) through its public surfaces, with
only the worker processes replaced by :class:`~tests.helpers.scripted_execution.ScriptedExecutor`,
whose attempts start, succeed, fail and crash when a rule says so. Time is a
FakeScheduler, moved one due timer at a time; after every rule the test waits until the
orchestration is quiet (see :meth:`RuntimeMachine._unquiet`), so each step's outcome is
decided by the steps alone, never by thread timing.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from actors.execution.contract import AttemptFailure, AttemptSuccess
from actors.orchestration.clock import FakeScheduler
from actors.orchestration.runtime import NewFile, Runtime
from actors.policy.book import BatchBook
from actors.policy.catalogue import ErrorCode
from actors.policy.document import DocumentDetails, PageInfo
from actors.policy.model import (
    BATCH_TRANSITIONS,
    FILE_TRANSITIONS,
    AttemptOutcome,
    BatchEvent,
    BatchRecord,
    BatchState,
    BatchView,
    DocumentInfo,
    ExtractionResult,
    FileRecord,
    FileState,
    IllegalTransitionError,
)
from actors.policy.refusals import (
    BatchNotFound,
    FileNotFound,
    InvalidRequest,
    ResultNotAvailable,
    RetryRefused,
    ServiceClosing,
)
from actors.policy.rules import (
    BatchPolicy,
    FailureThreshold,
    RestartIntensity,
    RetryPolicy,
    password_guesses_exhausted,
)
from actors.storage.blobs import BlobStore
from actors.storage.sqlite_store import SQLiteStore
from actors.storage.store import MemoryStore, Store, each_event
from tests.helpers.reliability import REPORT
from tests.helpers.scripted_execution import (
    AttemptKey,
    ObservedClock,
    Quiet,
    ScriptedAttempt,
    ScriptedExecutor,
)

# The book ---------------------------------------------------------------------------


class BookMachine(RuleBasedStateMachine):
    """Random file and batch moves, legal or not, with changes taken at random points."""

    @initialize(files=st.integers(1, 6))
    def open_book(self, files: int) -> None:
        batch = BatchRecord("b", "book", BatchPolicy(), BatchState.PENDING, 0.0, 0.0)
        records = tuple(FileRecord(f"f{i}", f"{i}.pdf", "ab" * 32, 1) for i in range(files))
        self.book = BatchBook(BatchView(batch, records))
        self.file_ids = [r.file_id for r in records]
        self.files: dict[str, FileState] = dict.fromkeys(self.file_ids, FileState.PENDING)
        self.batch = BatchState.PENDING
        self.handed_over = 0  # sequence of the last event take_changes handed over
        self.announced: list[tuple[str | None, FileState | BatchState, object]] = []
        self.now = 0.0

    @rule(pick=st.integers(0, 5), to=st.sampled_from(FileState), failures=st.integers(0, 3))
    def move_file(self, pick: int, to: FileState, failures: int) -> None:
        REPORT.attack("state machine step: book move file")
        file_id = self.file_ids[pick % len(self.file_ids)]
        current = self.files[file_id]
        sequence = self.book.batch.sequence
        if to in FILE_TRANSITIONS[current]:
            record = self.book.set_file(file_id, to, self.now, "moved", round_failures=failures)
            assert record.state is to
            assert record.round_failures == failures
            assert self.book.file(file_id) is record
            self.files[file_id] = to
            self.announced.append((file_id, current, to))
        else:
            counts = {s: self.book.count(s) for s in FileState}
            with pytest.raises(IllegalTransitionError, match=f"from {current} to {to}"):
                self.book.set_file(file_id, to, self.now, round_failures=failures)
            assert {s: self.book.count(s) for s in FileState} == counts
            assert self.book.file(file_id).state is current
            assert self.book.batch.sequence == sequence

    @rule(to=st.sampled_from(BatchState))
    def move_batch(self, to: BatchState) -> None:
        REPORT.attack("state machine step: book move batch")
        current = self.batch
        sequence = self.book.batch.sequence
        if to in BATCH_TRANSITIONS[current]:
            self.book.set_batch(to, self.now, f"to {to}")
            assert self.book.batch.state is to
            assert self.book.batch.reason == f"to {to}"
            self.batch = to
            self.announced.append((None, current, to))
        else:
            with pytest.raises(IllegalTransitionError, match=f"from {current} to {to}"):
                self.book.set_batch(to, self.now)
            assert self.book.batch.state is current
            assert self.book.batch.sequence == sequence

    @rule(seconds=st.sampled_from([0.0, 0.5, 3.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def take_changes(self) -> None:
        REPORT.attack("state machine step: book take changes")
        changes = self.book.take_changes()
        events = changes.events
        assert bool(changes) == bool(self.announced)
        assert [e.sequence for e in events] == list(
            range(self.handed_over + 1, self.handed_over + 1 + len(self.announced))
        )
        seen = [
            (e.file.file_id if e.file else None, e.previous_state, _state_after(e)) for e in events
        ]
        assert seen == self.announced
        changed = {file_id for file_id, _, _ in self.announced if file_id is not None}
        assert sorted(f.file_id for f in changes.files) == sorted(changed)
        for record in changes.files:
            assert record == self.book.file(record.file_id), "changes carry the latest record"
        assert changes.batch == self.book.batch
        self.handed_over += len(events)
        self.announced = []

    @invariant()
    def counts_match_files(self) -> None:
        tally = Counter(f.state for f in self.book.files())
        assert {s: self.book.count(s) for s in FileState} == {s: tally[s] for s in FileState}
        assert tally == Counter(self.files.values())
        assert dict(self.book.view().counts) == {s: tally[s] for s in FileState}
        assert self.book.unsettled == sum(n for s, n in tally.items() if not s.terminal)
        REPORT.invariant("book: counts equal the tally of the files' states")

    @invariant()
    def one_state_per_file(self) -> None:
        ids = [f.file_id for f in self.book.files()]
        assert ids == self.file_ids
        assert self.book.total == len(ids)
        assert {f.file_id: f.state for f in self.book.files()} == self.files
        REPORT.invariant("book: each file once, in the state its moves led to")

    @invariant()
    def sequence_counts_every_change(self) -> None:
        assert self.book.batch.sequence == self.handed_over + len(self.announced)
        assert self.book.batch.state is self.batch
        REPORT.invariant("book: the sequence counts every change, and only changes")


def _state_after(event: BatchEvent) -> FileState | BatchState:
    return event.file.state if event.file is not None else event.batch_state


def test_book_state_machine() -> None:
    run_state_machine_as_test(
        BookMachine,
        settings=settings(
            max_examples=300,
            stateful_step_count=40,
            deadline=None,
            derandomize=True,
            database=None,
        ),
    )


@pytest.mark.soak
def test_book_state_machine_soak() -> None:
    run_state_machine_as_test(
        BookMachine,
        settings=settings(max_examples=5000, stateful_step_count=100, deadline=None, database=None),
    )


# The runtime ------------------------------------------------------------------------

BLOB = "ab" * 32
MAX_BATCHES = 4
RETRYABLE = (ErrorCode.STORAGE_UNAVAILABLE, ErrorCode.PROCESSING_TIMEOUT)
PERMANENT = (
    ErrorCode.NOT_A_PDF,
    ErrorCode.PDF_MALFORMED,
    ErrorCode.PDF_WRONG_PASSWORD,
    ErrorCode.MEMORY_LIMIT_EXCEEDED,
    ErrorCode.INTERNAL,
)
_RETRYABLE_STATES = (FileState.FAILED, FileState.CANCELLED)
_INTERRUPTED = AttemptOutcome.INTERRUPTED
QUIET_TIMEOUT = 20.0
QUIET_TIMEOUT_ONCE_FAILED = 1.0
_timed_out = threading.Event()


def _quiet_timeout() -> float:
    # Generous, until a wait has failed: then shrinking replays the failure many
    # times, and each replay need not wait that long to see the same thing again.
    return QUIET_TIMEOUT_ONCE_FAILED if _timed_out.is_set() else QUIET_TIMEOUT


def _half() -> float:
    # Constant, so that a delay does not depend on which batch asked first. With the
    # policies below every delay and time is then a multiple of 1/16 s, exact in binary,
    # so a due time the supervisor computes equals the clock's to the bit.
    return 0.5


@st.composite
def policies(draw: st.DrawFn) -> BatchPolicy:
    initial = draw(st.sampled_from([0.5, 1.0, 4.0]))
    retry = RetryPolicy(
        max_attempts=draw(st.integers(1, 4)),
        initial_backoff=initial,
        max_backoff=initial * draw(st.sampled_from([1, 4, 16])),
        multiplier=draw(st.sampled_from([1.0, 2.0, 3.0])),
        jitter=draw(st.sampled_from(["full", "none"])),
        non_retryable_codes=draw(
            st.sampled_from([frozenset(), frozenset({ErrorCode.WORKER_CRASHED})])
        ),
    )
    return BatchPolicy(
        retry=retry,
        max_concurrency=draw(st.integers(1, 3)),
        file_timeout=draw(st.sampled_from([3.0, 10.0, 30.0])),
        tolerated_failures=FailureThreshold(
            max_failed_files=draw(st.none() | st.integers(0, 2)),
            max_failed_percent=draw(st.none() | st.sampled_from([25.0, 50.0])),
        ),
        restart_intensity=RestartIntensity(
            max_restarts=draw(st.sampled_from([0, 2, 50])),
            within_seconds=draw(st.sampled_from([10.0, 60.0])),
        ),
        max_manual_retries=draw(st.integers(0, 2)),
    )


def _result(key: AttemptKey) -> ExtractionResult:
    """A result no other attempt returns, so a replaced result shows; as a worker sends
    it, with its page's character count."""
    text = f"text of {key.batch_id}/{key.file_id}, attempt {key.attempt}"
    return ExtractionResult(
        page_count=key.attempt,
        encrypted=False,
        info=DocumentInfo(title=f"{key.file_id} attempt {key.attempt}"),
        pages=(text,),
        details=DocumentDetails(pages=(PageInfo(characters=len(text)),)),
    )


def _file(name: str) -> NewFile:
    return NewFile(name=name, blob=BLOB, size=1)


def _retry_refusal(policy: BatchPolicy, record: FileRecord) -> str | None:
    """Why a retry naming this file is refused, or ``None`` when it may be retried."""
    if record.state is FileState.SUCCEEDED:
        return "FILE_ALREADY_SUCCEEDED"
    if record.state not in _RETRYABLE_STATES:
        return "FILE_IN_FLIGHT"
    if record.manual_retries >= policy.max_manual_retries:
        return "MANUAL_RETRY_LIMIT"
    if password_guesses_exhausted(a.code for a in record.attempts):
        return "PASSWORD_ATTEMPTS_EXHAUSTED"
    return None


class RuntimeMachine(RuleBasedStateMachine):
    """Batches submitted, worked, failed, cancelled, retried and restarted at random.

    Every rule ends by waiting until the orchestration is quiet; invariants then read
    the store. A restart closes the runtime and builds a new one (and, for a durable
    store, reopens the database) on the same data, then resumes.
    """

    durable: ClassVar[bool] = False
    # Seconds a worker runs an attempt before its file is stored as RUNNING.
    show_running_after: ClassVar[float] = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="pdfbatch-rstate-"))
        self.quiet = Quiet()
        self.clock = ObservedClock(FakeScheduler(), self.quiet.changed)
        self.blobs = BlobStore(self.root / "blobs")
        self.heard: dict[str, list[BatchEvent]] = {}
        self._heard_lock = threading.Lock()
        self.store = self._open_store()
        self._unsubscribe = self.store.subscribe(each_event(self._hear))
        self.batches: list[str] = []
        self.files_of: dict[str, tuple[str, ...]] = {}
        self.policy_of: dict[str, BatchPolicy] = {}
        self.given: dict[AttemptKey, ExtractionResult] = {}
        self.kept: dict[tuple[str, str], ExtractionResult] = {}
        self.replayed: dict[str, tuple[int, BatchState, dict[str, FileState]]] = {}
        self.earlier_attempts: list[AttemptKey] = []  # started before the last restart
        self.pids = itertools.count(40_000)
        self.executor = ScriptedExecutor(self.quiet.changed)
        self.runtime = self._new_runtime()
        self._views: dict[str, BatchView] | None = None

    # Wiring --------------------------------------------------------------------------

    def _open_store(self) -> Store:
        if self.durable:
            return SQLiteStore(self.root / "pdfbatch.sqlite3", synchronous="NORMAL")
        return MemoryStore()

    def _new_runtime(self) -> Runtime:
        return Runtime(
            store=self.store,
            blobs=self.blobs,
            executor=self.executor,
            scheduler=self.clock,
            rand=_half,
            show_running_after=self.show_running_after,
        )

    def _hear(self, event: BatchEvent) -> None:
        with self._heard_lock:
            self.heard.setdefault(event.batch_id, []).append(event)
        self.quiet.changed()

    def _heard_of(self, batch_id: str) -> list[BatchEvent]:
        with self._heard_lock:
            return list(self.heard.get(batch_id, ()))

    def teardown(self) -> None:
        # Every step runs, even after one fails; in the reverse order of these lines.
        with ExitStack() as stack:
            stack.callback(shutil.rmtree, self.root, ignore_errors=True)
            if isinstance(self.store, SQLiteStore):
                stack.callback(self.store.close)
            stack.callback(self.clock.close)
            stack.callback(self.executor.close)
            stack.callback(self.runtime.close)
            stack.callback(self._unsubscribe)

    # Waiting -------------------------------------------------------------------------

    def _settle(self, ended: AttemptKey | None = None) -> None:
        """Wait until the orchestration has nothing left to do on its own, ``ended``
        (an attempt the test just ended) included."""
        self._views = None
        self._wait(lambda: self._unstored(ended) or self._unquiet())
        REPORT.invariant("workers run exactly the attempts stored as running")
        REPORT.invariant("armed timers are exactly the backoffs and the running deadlines")

    def _wait(self, problem: Callable[[], str | None]) -> None:
        try:
            self.quiet.wait(problem, _quiet_timeout())
        except AssertionError:
            _timed_out.set()
            raise

    def _unstored(self, ended: AttemptKey | None) -> str | None:
        """Whether the end of ``ended`` is still to be stored: an attempt no worker
        started leaves its file PENDING, as stored, until then."""
        if ended is None:
            return None
        record = self._view(ended.batch_id).file(ended.file_id)
        assert record is not None
        if record.state is FileState.PENDING and len(record.attempts) < ended.attempt:
            return f"the end of {ended} is not stored"
        return None

    def _unshown(self, live: Mapping[AttemptKey, Any]) -> dict[AttemptKey, float]:
        """The attempts a worker started less than ``show_running_after`` ago (not
        stored as running yet), with their starts."""
        now = self.clock.now()
        return {
            key: attempt.started_at
            for key, attempt in live.items()
            if attempt.started_at is not None and attempt.started_at + self.show_running_after > now
        }

    def _shown(self, live: Mapping[AttemptKey, Any]) -> set[AttemptKey]:
        """The attempts a worker has run for ``show_running_after``: stored as running."""
        started = {key for key, attempt in live.items() if attempt.started_at is not None}
        return started - set(self._unshown(live))

    def _unquiet(self) -> str | None:
        """What the orchestration still has to do, or ``None`` when it is quiet."""
        live = self.executor.live()
        now = self.clock.now()
        running: set[AttemptKey] = set()
        waiting: set[AttemptKey] = set()
        dues: list[float] = []
        for batch_id in self.batches:
            view = self.store.load(batch_id)
            if view is None:
                return f"batch {self._name(batch_id)} is gone"
            if view.batch.state in (BatchState.PENDING, BatchState.CANCELLING):
                return f"batch {self._name(batch_id)} is {view.batch.state}"
            # Listeners hear of a commit after it: the last ones may still be on their way.
            heard = len(self._heard_of(batch_id))
            if heard != view.batch.sequence:
                return (
                    f"heard {heard} events of {self._name(batch_id)}, stored {view.batch.sequence}"
                )
            for record in view.files:
                if record.state is FileState.RUNNING:
                    running.add(AttemptKey(batch_id, record.file_id, len(record.attempts)))
                elif record.state is FileState.BACKOFF:
                    due = record.next_attempt_at
                    assert due is not None, f"{record.file_id} in BACKOFF without a due time"
                    if due <= now:
                        return f"{record.file_id} is still in BACKOFF, due at {due}"
                    dues.append(due)
                if record.state is FileState.PENDING:
                    # An attempt handed over that no worker took yet is not counted.
                    waiting.add(AttemptKey(batch_id, record.file_id, len(record.attempts) + 1))
            if not view.batch.state.terminal and all(f.state.terminal for f in view.files):
                return f"batch {self._name(batch_id)} is {view.batch.state}, its files settled"
            if view.batch.state is BatchState.RUNNING:
                # A waiting file is handed over as soon as a slot frees: nothing shows the
                # supervisor still has to, as a file waits PENDING either way.
                handed = {k.file_id for k in live if k.batch_id == batch_id}
                if len(handed) < self.policy_of[batch_id].max_concurrency and any(
                    f.state is FileState.PENDING and f.file_id not in handed for f in view.files
                ):
                    return f"batch {self._name(batch_id)} has a free slot and a waiting file"
        for key, attempt in live.items():
            if attempt.started_at is not None:
                deadline = attempt.started_at + self.policy_of[key.batch_id].file_timeout
                if deadline <= now:
                    return f"attempt {key} runs past its deadline"
                dues.append(deadline)
        shown = self._shown(live)
        if shown != running:
            return (
                f"the executor runs {sorted(shown)} long enough, the store says {sorted(running)}"
            )
        # A start not shown yet is stored when it is due (one wait per batch, for its
        # oldest); until then its file waits, as does one queued for a worker.
        due_by_batch: dict[str, float] = {}
        for key, started_at in self._unshown(live).items():
            due = started_at + self.show_running_after
            due_by_batch[key.batch_id] = min(due, due_by_batch.get(key.batch_id, due))
        dues.extend(due_by_batch.values())
        queued = set(live) - shown
        if not queued <= waiting:
            return f"attempts {sorted(queued - waiting)} wait for a worker, their files do not"
        armed = self.clock.live_dues()
        if armed != sorted(dues):
            return f"timers armed at {armed}, expected {sorted(dues)}"
        if set(self.executor.live()) != set(live):
            return "the executor changed while it was read"
        return None

    # Helpers -------------------------------------------------------------------------

    def _name(self, batch_id: str) -> str:
        return f"#{self.batches.index(batch_id)}"

    def _view(self, batch_id: str) -> BatchView:
        view = self.store.load(batch_id)
        assert view is not None, f"batch {self._name(batch_id)} was lost"
        return view

    def _all_views(self) -> dict[str, BatchView]:
        if self._views is None:
            self._views = {b: self._view(b) for b in self.batches}
        return self._views

    def _live(self) -> list[tuple[AttemptKey, ScriptedAttempt]]:
        order = {b: i for i, b in enumerate(self.batches)}
        live = self.executor.live()
        return sorted(
            live.items(),
            key=lambda item: (order[item[0].batch_id], item[0].file_id, item[0].attempt),
        )

    def _queued(self) -> list[tuple[AttemptKey, ScriptedAttempt]]:
        return [(k, a) for k, a in self._live() if a.started_at is None]

    def _step(self, rule_name: str) -> None:
        REPORT.attack(f"state machine step: {rule_name}")

    def _assert_unchanged(self, batch_id: str, before: BatchView, heard: int) -> None:
        assert self._view(batch_id) == before, "a refused request changed the batch"
        assert len(self._heard_of(batch_id)) == heard, "a refused request announced a change"
        REPORT.invariant("a refused request changes nothing")

    # Rules: submit -------------------------------------------------------------------

    @precondition(lambda self: len(self.batches) < MAX_BATCHES)
    @rule(files=st.integers(1, 4), policy=policies())
    def submit(self, files: int, policy: BatchPolicy) -> None:
        self._step("submit")
        new = [NewFile(name=f"{i}.pdf", blob=BLOB, size=100 + i) for i in range(files)]
        view = self.runtime.submit(new, name=f"batch {len(self.batches)}", policy=policy)
        batch_id = view.batch.batch_id
        assert batch_id not in self.batches
        assert view.batch.policy == policy
        file_ids = tuple(f.file_id for f in view.files)
        assert len(set(file_ids)) == files
        self.batches.append(batch_id)
        self.files_of[batch_id] = file_ids
        self.policy_of[batch_id] = policy
        self._settle()
        after = self._view(batch_id)
        assert after.batch.state is BatchState.RUNNING
        # Handed over, and waiting for a worker: none runs until one starts it.
        assert after.counts[FileState.RUNNING] == 0
        handed = [key for key in self.executor.live() if key.batch_id == batch_id]
        assert len(handed) == min(files, policy.max_concurrency)

    # Rules: the workers --------------------------------------------------------------

    @precondition(lambda self: self._queued())
    @rule(pick=st.integers(0, 63))
    def start(self, pick: int) -> None:
        self._step("start")
        queued = self._queued()
        key, _ = queued[pick % len(queued)]
        self.executor.start(key, next(self.pids), self.clock.now())
        self._settle()
        record = self._view(key.batch_id).file(key.file_id)
        assert record is not None
        if self.show_running_after:
            # Shown once it has run a while (the clock's advance gets there).
            assert record.state is FileState.PENDING
            assert len(record.attempts) == key.attempt - 1
        else:
            assert record.state is FileState.RUNNING
            assert len(record.attempts) == key.attempt

    @precondition(lambda self: self.executor.live())
    @rule(pick=st.integers(0, 63))
    def succeed(self, pick: int) -> None:
        self._step("succeed")
        live = self._live()
        key, attempt = live[pick % len(live)]
        result = _result(key)
        self.given[key] = result
        assert self.executor.end(key, AttemptSuccess(result, attempt.pid))
        self._settle(ended=key)
        record = self._view(key.batch_id).file(key.file_id)
        assert record is not None
        assert record.state is FileState.SUCCEEDED
        assert len(record.attempts) == key.attempt
        assert record.attempts[-1].outcome is AttemptOutcome.SUCCEEDED
        assert record.error is None
        assert self.runtime.result(key.batch_id, key.file_id) == result

    @precondition(lambda self: self.executor.live())
    @rule(pick=st.integers(0, 63), code=st.sampled_from(RETRYABLE))
    def fail_retryable(self, pick: int, code: ErrorCode) -> None:
        self._step("fail retryable")
        self._fail(pick, code)

    @precondition(lambda self: self.executor.live())
    @rule(pick=st.integers(0, 63), code=st.sampled_from(PERMANENT))
    def fail_permanent(self, pick: int, code: ErrorCode) -> None:
        self._step("fail permanent")
        self._fail(pick, code)

    @precondition(lambda self: self.executor.live())
    @rule(pick=st.integers(0, 63))
    def crash(self, pick: int) -> None:
        self._step("crash")
        self._fail(pick, ErrorCode.WORKER_CRASHED)

    def _fail(self, pick: int, code: ErrorCode) -> None:
        live = self._live()
        key, attempt = live[pick % len(live)]
        before = self._view(key.batch_id).file(key.file_id)
        assert before is not None
        now = self.clock.now()
        report = AttemptFailure(code, attempt.pid, "ScriptedFailure", "scripted")
        assert self.executor.end(key, report)
        self._settle(ended=key)
        view = self._view(key.batch_id)
        record = view.file(key.file_id)
        assert record is not None
        policy = self.policy_of[key.batch_id]
        failures = before.round_failures + 1
        last = record.attempts[key.attempt - 1]
        assert (last.outcome, last.code) == (AttemptOutcome.FAILED, code)
        assert record.round_failures == failures
        assert record.error is not None
        assert record.error.code is code
        if record.state is FileState.BACKOFF:
            assert policy.retry.is_retryable(code)
            assert failures < policy.retry.max_attempts
            delay = policy.retry.restart_delay(failures, _half)
            assert last.retry_delay == delay
            assert record.next_attempt_at == now + delay
            return
        assert record.state is FileState.FAILED
        if policy.retry.is_retryable(code) and failures < policy.retry.max_attempts:
            # Only the batch's restart intensity gives up on a file with attempts left.
            assert view.batch.state is BatchState.FAILED
            assert "automatic restarts" in view.batch.reason
        elif policy.tolerated_failures.exceeded(view.counts[FileState.FAILED], len(view.files)):
            assert view.batch.state is BatchState.FAILED
            assert "more than the batch tolerates" in view.batch.reason

    # Rules: time ---------------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.25, 1.0, 3.0, 10.0, 40.0]))
    def advance(self, seconds: float) -> None:
        """Move the clock, stopping at each due timer until what it set off is done."""
        self._step("advance the clock")
        target = self.clock.now() + seconds
        while True:
            due = [d for d in self.clock.live_dues() if d <= target]
            step_to = min(due) if due else target
            self.clock.advance_to(step_to)
            self._settle()
            if step_to >= target:
                return

    # Rules: requests -----------------------------------------------------------------

    @precondition(lambda self: self.batches)
    @rule(pick=st.integers(0, 63))
    def retry_batch(self, pick: int) -> None:
        self._step("retry batch")
        batch_id = self.batches[pick % len(self.batches)]
        policy = self.policy_of[batch_id]
        before = self._view(batch_id)
        heard = len(self._heard_of(batch_id))
        chosen = [f.file_id for f in before.files if _retry_refusal(policy, f) is None]
        if not chosen:
            with pytest.raises(RetryRefused) as refused:
                self.runtime.retry(batch_id, requested_by="machine")
            assert refused.value.reason == "NOTHING_TO_RETRY"
            self._assert_unchanged(batch_id, before, heard)
            return
        self.runtime.retry(batch_id, requested_by="machine")
        self._settle()
        self._check_retried(batch_id, before, chosen)

    @precondition(lambda self: self.batches)
    @rule(
        pick=st.integers(0, 63),
        files=st.lists(st.integers(0, 7), min_size=1, max_size=3),
        unknown=st.booleans(),
    )
    def retry_files(self, pick: int, files: list[int], unknown: bool) -> None:
        self._step("retry files")
        batch_id = self.batches[pick % len(self.batches)]
        policy = self.policy_of[batch_id]
        before = self._view(batch_id)
        heard = len(self._heard_of(batch_id))
        ids = list(dict.fromkeys(before.files[i % len(before.files)].file_id for i in files))
        asked = [*ids, "f99999"] if unknown else ids
        refusals = {}
        for file_id in ids:
            record = before.file(file_id)
            assert record is not None
            reason = _retry_refusal(policy, record)
            if reason is not None:
                refusals[file_id] = reason
        if refusals:
            with pytest.raises(RetryRefused) as refused:
                self.runtime.retry(batch_id, asked, requested_by="machine")
            assert refused.value.file_id in refusals
            assert refused.value.reason == refusals[refused.value.file_id]
            self._assert_unchanged(batch_id, before, heard)
        elif unknown:
            with pytest.raises(FileNotFound):
                self.runtime.retry(batch_id, asked, requested_by="machine")
            self._assert_unchanged(batch_id, before, heard)
        else:
            self.runtime.retry(batch_id, asked, requested_by="machine")
            self._settle()
            self._check_retried(batch_id, before, ids)

    def _check_retried(self, batch_id: str, before: BatchView, chosen: list[str]) -> None:
        after = self._view(batch_id)
        assert after.batch.state is BatchState.RUNNING
        for old in before.files:
            new = after.file(old.file_id)
            assert new is not None
            if old.file_id not in chosen:
                assert new == old, f"{old.file_id} was not retried, yet it changed"
                continue
            assert new.manual_retries == old.manual_retries + 1
            assert new.round_failures == 0
            assert new.attempts[: len(old.attempts)] == old.attempts
            if new.state is FileState.RUNNING:
                assert len(new.attempts) == len(old.attempts) + 1
            else:
                assert new.state is FileState.PENDING
                assert new.attempts == old.attempts
        REPORT.invariant("a retry touches only the files it retried")

    @precondition(lambda self: self.batches)
    @rule(pick=st.integers(0, 63))
    def cancel(self, pick: int) -> None:
        self._step("cancel")
        batch_id = self.batches[pick % len(self.batches)]
        before = self._view(batch_id)
        heard = len(self._heard_of(batch_id))
        summary = self.runtime.cancel(batch_id, reason="machine")
        assert not [k for k in self.executor.live() if k.batch_id == batch_id], (
            "cancel returned while attempts of the batch still ran"
        )
        if before.batch.state.terminal:
            assert summary == before.summary()
            self._assert_unchanged(batch_id, before, heard)
            return
        # The reply is what is stored: the batch and its counts.
        view = self._view(batch_id)
        assert summary == view.summary()
        assert view.batch.state is BatchState.CANCELLED
        for old, new in zip(before.files, view.files, strict=True):
            if old.state.terminal:
                assert new == old
            else:
                assert new.state is FileState.CANCELLED
        self._settle()
        assert self._view(batch_id) == view, "the batch changed after its cancel returned"

    @precondition(lambda self: self.batches)
    @rule()
    def restart(self) -> None:
        self._step("restart")
        before = {b: self._view(b) for b in self.batches}
        # Started, not shown as running yet: close stores them as running.
        unshown = self._unshown(self.executor.live())
        old = self.runtime
        old.close()
        with pytest.raises(ServiceClosing):
            old.submit([NewFile(name="late.pdf", blob=BLOB, size=1)])
        # Known bug (test_close_starts_no_attempt): close may start attempts of waiting
        # files, which the stopping supervisor then stops shortly after close returns.
        self._wait(lambda: "attempts run after close" if self.executor.live() else None)
        self.executor.close()
        self.earlier_attempts.extend(self.executor.started)
        for batch_id, view in before.items():
            begun = {k.file_id: at for k, at in unshown.items() if k.batch_id == batch_id}
            _assert_close_kept(view, self._view(batch_id), begun)
        if self.durable:
            self._unsubscribe()
            assert isinstance(self.store, SQLiteStore)
            self.store.close()
            self.store = self._open_store()
            self._unsubscribe = self.store.subscribe(each_event(self._hear))
        self.executor = ScriptedExecutor(self.quiet.changed)
        self.runtime = self._new_runtime()
        resumed = self.runtime.resume()
        assert sorted(resumed) == sorted(b for b, v in before.items() if not v.batch.state.terminal)
        self._settle()
        for batch_id, view in before.items():
            after = self._view(batch_id)
            if view.batch.state.terminal:
                assert after == view, "a settled batch changed on resume"
                continue
            for old_record in view.files:
                new = after.file(old_record.file_id)
                assert new is not None
                assert new.round_failures == old_record.round_failures
                if old_record.state is FileState.RUNNING:
                    cut = new.attempts[len(old_record.attempts) - 1]
                    assert cut.outcome is AttemptOutcome.INTERRUPTED
        REPORT.invariant("a restart loses nothing and interrupts only running attempts")

    @rule(
        op=st.sampled_from(
            ["get", "retry", "cancel", "result", "no files", "path name", "control name"]
        )
    )
    def refused_request(self, op: str) -> None:
        """Requests the domain refuses outright: an unknown batch, a malformed submit."""
        self._step("refused request")
        missing = "0" * 32
        refusals: dict[str, tuple[type[Exception], Callable[[], object]]] = {
            "get": (BatchNotFound, lambda: self.runtime.get(missing)),
            "retry": (BatchNotFound, lambda: self.runtime.retry(missing)),
            "cancel": (BatchNotFound, lambda: self.runtime.cancel(missing)),
            "result": (BatchNotFound, lambda: self.runtime.result(missing, "f00001")),
            "no files": (InvalidRequest, lambda: self.runtime.submit([])),
            "path name": (InvalidRequest, lambda: self.runtime.submit([_file("a/b.pdf")])),
            "control name": (InvalidRequest, lambda: self.runtime.submit([_file("x\x00")])),
        }
        stored = self.store.list_batches()
        refusal, call = refusals[op]
        with pytest.raises(refusal):
            call()
        assert self.store.list_batches() == stored
        REPORT.invariant("a refused request changes nothing")

    @precondition(lambda self: self.batches)
    @rule(pick=st.integers(0, 63), file=st.integers(0, 4))
    def ask_result(self, pick: int, file: int) -> None:
        self._step("ask for a result")
        batch_id = self.batches[pick % len(self.batches)]
        files = self.files_of[batch_id]
        if file >= len(files):
            with pytest.raises(FileNotFound):
                self.runtime.result(batch_id, "f99999")
            return
        record = self._view(batch_id).file(files[file])
        assert record is not None
        if record.state is FileState.SUCCEEDED:
            assert self.runtime.result(batch_id, record.file_id) == self.kept.get(
                (batch_id, record.file_id), self.given[self._succeeded_key(batch_id, record)]
            )
        else:
            with pytest.raises(ResultNotAvailable):
                self.runtime.result(batch_id, record.file_id)

    def _succeeded_key(self, batch_id: str, record: FileRecord) -> AttemptKey:
        return AttemptKey(batch_id, record.file_id, len(record.attempts))

    # Invariants ----------------------------------------------------------------------

    @invariant()
    def nothing_lost(self) -> None:
        stored = {b.batch_id for b in self.store.list_batches()}
        assert stored == set(self.batches)
        for batch_id, view in self._all_views().items():
            ids = [f.file_id for f in view.files]
            assert ids == list(self.files_of[batch_id]), "files lost, added or duplicated"
            assert view.batch.policy == self.policy_of[batch_id]
        REPORT.invariant("nothing is lost: every batch and file submitted is stored once")

    @invariant()
    def events_replay_to_the_stored_state(self) -> None:
        for batch_id, view in self._all_views().items():
            events = self._heard_of(batch_id)
            seen, batch_state, files = self.replayed.get(
                batch_id,
                (0, BatchState.PENDING, dict.fromkeys(self.files_of[batch_id], FileState.PENDING)),
            )
            for event in events[seen:]:
                assert event.sequence == seen + 1, "event sequences must count up without gaps"
                seen = event.sequence
                if event.bulk is not None:
                    assert event.previous_state is None
                    assert event.bulk.file_ids, "a bulk change names its files"
                    for file_id in event.bulk.file_ids:
                        current = files[file_id]
                        assert event.bulk.state in FILE_TRANSITIONS[current], (
                            f"{file_id}: {current} -> {event.bulk.state} is not allowed"
                        )
                        files[file_id] = event.bulk.state
                    assert event.batch_state is batch_state
                elif event.file is None:
                    assert event.previous_state is batch_state
                    assert event.batch_state in BATCH_TRANSITIONS[batch_state]
                    batch_state = event.batch_state
                else:
                    current = files[event.file.file_id]
                    assert event.previous_state is current
                    # An attempt that started and ended between two commits is told by
                    # its end alone, from PENDING: through RUNNING.
                    through_running = (
                        current is FileState.PENDING
                        and event.file.state in FILE_TRANSITIONS[FileState.RUNNING]
                    )
                    assert event.file.state in FILE_TRANSITIONS[current] or through_running, (
                        f"{event.file.file_id}: {current} -> {event.file.state} is not allowed"
                    )
                    files[event.file.file_id] = event.file.state
                    assert event.batch_state is batch_state
            self.replayed[batch_id] = (seen, batch_state, files)
            assert view.batch.sequence == seen
            assert view.batch.state is batch_state
            assert {f.file_id: f.state for f in view.files} == files
            assert dict(view.counts) == {s: Counter(files.values())[s] for s in FileState}
            stored = self.store.events_after(batch_id, 0)
            assert [e.sequence for e in stored] == list(range(1, seen + 1))
            assert [(e.file, e.bulk) for e in stored] == [(e.file, e.bulk) for e in events]
        REPORT.invariant("counts equal the tally of the files' states")
        REPORT.invariant("every state change is an allowed transition")
        REPORT.invariant("event sequences count up by one, across restarts")

    @invariant()
    def terminal_batch_iff_settled_files(self) -> None:
        for view in self._all_views().values():
            settled = all(f.state.terminal for f in view.files)
            assert view.batch.state.terminal == settled
            succeeded = view.counts[FileState.SUCCEEDED]
            if view.batch.state is BatchState.SUCCEEDED or succeeded == len(view.files):
                assert succeeded == len(view.files)
                assert view.batch.state is BatchState.SUCCEEDED
            if view.batch.state is BatchState.PARTIALLY_SUCCEEDED:
                assert 0 < succeeded < len(view.files)
        REPORT.invariant("a batch is terminal exactly when all its files are")

    @invariant()
    def results_never_change(self) -> None:
        for batch_id, view in self._all_views().items():
            for record in view.files:
                kept = self.kept.get((batch_id, record.file_id))
                if record.state is not FileState.SUCCEEDED:
                    assert kept is None, f"{record.file_id} left SUCCEEDED"
                    continue
                result = self.store.load_result(batch_id, record.file_id)
                assert result == self.given[self._succeeded_key(batch_id, record)]
                if kept is None:
                    self.kept[(batch_id, record.file_id)] = result
                else:
                    assert result == kept, f"{record.file_id}'s result changed"
        REPORT.invariant("a succeeded file's result never changes")

    @invariant()
    def attempts_within_budget(self) -> None:
        for batch_id, view in self._all_views().items():
            policy = self.policy_of[batch_id]
            for record in view.files:
                numbers = [a.number for a in record.attempts]
                assert numbers == list(range(1, len(numbers) + 1))
                counted = [
                    a for a in record.attempts if a.outcome is not AttemptOutcome.INTERRUPTED
                ]
                rounds = record.manual_retries + 1
                assert len(counted) <= policy.retry.max_attempts * rounds
                assert record.round_failures <= policy.retry.max_attempts
                assert record.manual_retries <= policy.max_manual_retries
                open_attempts = [a for a in record.attempts if a.outcome is None]
                if record.state is FileState.RUNNING:
                    assert open_attempts == [record.attempts[-1]]
                else:
                    assert open_attempts == []
        # One not started when the service closed is handed over again, as the same
        # attempt: none of it was stored.
        attempts = [*self.earlier_attempts, *self.executor.started]
        assert len(set(attempts)) == len(attempts), "an attempt was handed to a worker twice"
        REPORT.invariant("attempts stay within the policy's budget")

    @invariant()
    def concurrency_respected(self) -> None:
        live = self.executor.live()
        for batch_id, view in self._all_views().items():
            limit = self.policy_of[batch_id].max_concurrency
            handed = {k.file_id: a for k, a in live.items() if k.batch_id == batch_id}
            shown = sum(1 for key in self._shown(live) if key.batch_id == batch_id)
            assert view.counts[FileState.RUNNING] == shown
            assert len(handed) <= limit
            not_handed = [
                f for f in view.files if f.state is FileState.PENDING and f.file_id not in handed
            ]
            if view.batch.state is BatchState.RUNNING and not_handed:
                assert len(handed) == limit, "a file waits while a slot is free"
        REPORT.invariant("at most max_concurrency attempts run, and no slot idles")


def _assert_close_kept(before: BatchView, after: BatchView, begun: Mapping[str, float]) -> None:
    """Close leaves every batch as stored, to be resumed by the next start, but for the
    starts it stores first: ``begun``, each file's worker start not shown yet."""
    if not begun:
        assert after == before, "close changed a stored batch"
    assert after.batch.state is before.batch.state
    for old, new in zip(before.files, after.files, strict=True):
        if old.file_id not in begun:
            assert new == old, "close changed a stored file"
            continue
        assert (old.state, new.state) == (FileState.PENDING, FileState.RUNNING)
        assert new.attempts[:-1] == old.attempts
        assert (new.attempts[-1].started_at, new.attempts[-1].outcome) == (begun[old.file_id], None)
    REPORT.invariant("close stops everything and leaves the batches to resume")


class DurableRuntimeMachine(RuntimeMachine):
    """The same on SQLite, as the server runs: a restart reopens the database file, and
    a file is stored as running once its worker has run it for a while."""

    durable = True
    show_running_after = 2.0


def _ci(examples: int) -> settings:
    """Reproducible in CI: the same examples every run, no example database."""
    return settings(
        max_examples=examples,
        stateful_step_count=50,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


_SOAK = settings(
    max_examples=400,
    stateful_step_count=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_runtime_state_machine() -> None:
    run_state_machine_as_test(RuntimeMachine, settings=_ci(150))


def test_durable_runtime_state_machine() -> None:
    run_state_machine_as_test(DurableRuntimeMachine, settings=_ci(40))


@pytest.mark.soak
def test_runtime_state_machine_soak() -> None:
    run_state_machine_as_test(RuntimeMachine, settings=_SOAK)


@pytest.mark.soak
def test_durable_runtime_state_machine_soak() -> None:
    run_state_machine_as_test(DurableRuntimeMachine, settings=_SOAK)


def test_close_starts_no_attempt() -> None:
    quiet = Quiet()
    clock = ObservedClock(FakeScheduler(), quiet.changed)
    store = MemoryStore()
    executor = ScriptedExecutor(quiet.changed)
    root = Path(tempfile.mkdtemp(prefix="pdfbatch-rstate-"))
    runtime = Runtime(
        store=store, blobs=BlobStore(root / "blobs"), executor=executor, scheduler=clock
    )
    try:
        files = [NewFile(name=f"{i}.pdf", blob=BLOB, size=1) for i in range(2)]
        batch_id = runtime.submit(files, policy=BatchPolicy(max_concurrency=1)).batch.batch_id
        quiet.wait(lambda: None if executor.live() else "the first attempt is not queued", 10)
        runtime.close()
        view = store.load(batch_id)
        assert view is not None
        waiting = view.file("f00002")
        assert waiting is not None
        assert (waiting.state, waiting.attempts) == (FileState.PENDING, ())
        assert [key.file_id for key in executor.submitted] == ["f00001"]
    finally:
        runtime.close()
        quiet.wait(lambda: "attempts run after close" if executor.live() else None, 10)
        executor.close()
        clock.close()
        shutil.rmtree(root, ignore_errors=True)
