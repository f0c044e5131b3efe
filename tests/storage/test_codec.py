"""Every record survives its stored form unchanged: rows, JSON and a real SQLite file."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.policy.catalogue import ErrorCode
from actors.policy.document import (
    Attachment,
    DocumentDetails,
    ExtractionMode,
    OutlineEntry,
    PageInfo,
)
from actors.policy.model import (
    Attempt,
    AttemptOutcome,
    BatchEvent,
    BatchRecord,
    BatchState,
    BatchView,
    BulkChange,
    DocumentInfo,
    FileError,
    FileRecord,
    FileState,
    ResultWarning,
    WarningCode,
)
from actors.policy.rules import BatchPolicy, FailureThreshold, RestartIntensity, RetryPolicy
from actors.storage import codec
from actors.storage.sqlite_store import SQLiteStore

# Strings as they reach the store: valid Unicode (gRPC strings are UTF-8).
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
optional_times = st.none() | times
counts = st.integers(min_value=0, max_value=2**31)


@st.composite
def policies(draw: st.DrawFn) -> BatchPolicy:
    initial = draw(st.floats(min_value=0.001, max_value=3600))
    retry = RetryPolicy(
        max_attempts=draw(st.integers(1, 100)),
        initial_backoff=initial,
        max_backoff=draw(st.floats(min_value=initial, max_value=86_400)),
        multiplier=draw(st.floats(min_value=1, max_value=100)),
        jitter=draw(st.sampled_from(["full", "none"])),
        non_retryable_codes=draw(st.frozensets(st.sampled_from(ErrorCode))),
    )
    return BatchPolicy(
        retry=retry,
        max_concurrency=draw(st.integers(1, 1024)),
        file_timeout=draw(st.floats(min_value=0.001, max_value=86_400)),
        tolerated_failures=FailureThreshold(
            max_failed_files=draw(st.none() | st.integers(0, 10_000)),
            max_failed_percent=draw(st.none() | st.floats(min_value=0, max_value=100)),
        ),
        restart_intensity=RestartIntensity(
            max_restarts=draw(st.integers(0, 1000)),
            within_seconds=draw(st.floats(min_value=0.001, max_value=1e6)),
        ),
        max_manual_retries=draw(st.integers(0, 1000)),
        extraction_mode=draw(st.sampled_from(ExtractionMode)),
    )


errors = st.builds(
    FileError, code=st.sampled_from(ErrorCode), at=times, message=texts, retryable=st.booleans()
)
attempts = st.builds(
    Attempt,
    number=st.integers(1, 10_000),
    started_at=times,
    ended_at=optional_times,
    outcome=st.none() | st.sampled_from(AttemptOutcome),
    code=st.none() | st.sampled_from(ErrorCode),
    worker_pid=st.none() | st.integers(1, 2**22),
    retry_delay=optional_times,
)
digests = st.text("0123456789abcdef", min_size=64, max_size=64)
warnings = st.builds(
    ResultWarning,
    code=st.sampled_from(WarningCode),
    place=st.sampled_from(["text", "title", "outline", "pages"]),
    count=counts,
    total=counts,
)
sizes = st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False)
details = st.builds(
    DocumentDetails,
    pdf_version=st.none() | st.sampled_from(["1.4", "1.7", "2.0"]),
    pages=st.lists(
        st.builds(PageInfo, sizes, sizes, st.sampled_from([0, 90, 180, 270]), counts), max_size=4
    ).map(tuple),
    outline=st.lists(
        st.builds(OutlineEntry, texts, st.none() | counts, st.integers(0, 100)), max_size=4
    ).map(tuple),
    attachments=st.lists(st.builds(Attachment, texts, st.none() | counts), max_size=3).map(tuple),
    has_xmp=st.booleans(),
)


@st.composite
def files(draw: st.DrawFn, file_id: str | None = None) -> FileRecord:
    history = draw(st.lists(attempts, max_size=4))
    numbered = tuple(
        Attempt(n, a.started_at, a.ended_at, a.outcome, a.code, a.worker_pid, a.retry_delay)
        for n, a in enumerate(history, start=1)
    )
    return FileRecord(
        file_id=file_id or draw(texts),
        name=draw(texts),
        blob=draw(digests),
        size=draw(counts),
        state=draw(st.sampled_from(FileState)),
        attempts=numbered,
        round_failures=draw(counts),
        manual_retries=draw(counts),
        next_attempt_at=draw(optional_times),
        error=draw(st.none() | errors),
        encrypted_with_password=draw(st.booleans()),
        warnings=tuple(draw(st.lists(warnings, max_size=3))),
    )


batches = st.builds(
    BatchRecord,
    batch_id=texts,
    name=texts,
    policy=policies(),
    state=st.sampled_from(BatchState),
    created_at=times,
    updated_at=times,
    sequence=counts,
    reason=texts,
    labels=st.dictionaries(texts, texts, max_size=3),
    owner=texts,
    idempotency_key=texts,
    bytes_released_at=optional_times,
)


@st.composite
def bulk_changes(draw: st.DrawFn) -> BulkChange:
    state = draw(st.sampled_from(FileState))
    error = draw(st.none() | errors)
    if draw(st.booleans()):
        return BulkChange(tuple(draw(st.lists(texts, max_size=5))), state, error)
    return BulkChange(
        (),
        state,
        error,
        from_state=draw(st.sampled_from(FileState)),
        count=draw(counts),
        manual_retry=draw(st.booleans()),
        max_manual_retries=draw(counts),
    )


@st.composite
def events(draw: st.DrawFn) -> BatchEvent:
    file = draw(st.none() | files())
    bulk = None
    if file is None and draw(st.booleans()):
        bulk = draw(bulk_changes())
    # A file event's previous state is the file's, a batch event's the batch's; a bulk
    # change has none.
    states = st.sampled_from(BatchState) if file is None else st.sampled_from(FileState)
    return BatchEvent(
        sequence=draw(st.integers(1, 2**40)),
        batch_id=draw(texts),
        at=draw(times),
        batch_state=draw(st.sampled_from(BatchState)),
        file=file,
        reason=draw(texts),
        previous_state=None if bulk else draw(st.none() | states),
        bulk=bulk,
        counts=draw(st.dictionaries(st.sampled_from(FileState), counts)),
    )


infos = st.builds(
    DocumentInfo,
    **{name: st.none() | texts for name in ("title", "author", "subject", "creation_date")},
)


@pytest.mark.parametrize(
    ("record", "encoded"),
    [
        (BatchRecord, codec.BATCH_COLUMNS),
        (FileRecord, (*codec.FILE_COLUMNS, "attempts")),
        (Attempt, codec.ATTEMPT_COLUMNS),
        (BatchEvent, json.loads(codec.event_to_json(BatchEvent(1, "b", 0.0, BatchState.RUNNING)))),
        (FileError, codec.error_to_dict(FileError(ErrorCode.INTERNAL, 0.0))),
        (DocumentInfo, json.loads(codec.info_to_json(DocumentInfo()))),
    ],
)
def test_every_field_of_every_record_is_stored(record: type, encoded: Iterable[str]) -> None:
    # A field added to a record and not to the codec would be lost on every restart.
    assert sorted(f.name for f in dataclasses.fields(record)) == sorted(encoded)


@given(batches)
def test_a_batch_survives_its_row(batch: BatchRecord) -> None:
    assert codec.batch_from_row(codec.batch_to_row(batch)) == batch


@given(files())
def test_a_file_survives_its_row_with_its_attempts_beside_it(record: FileRecord) -> None:
    rows = [codec.attempt_to_row(a) for a in record.attempts]
    rebuilt = codec.file_from_row(
        codec.file_to_row(record), [codec.attempt_from_row(r) for r in rows]
    )
    assert rebuilt == record


@given(files())
def test_a_files_change_writes_its_columns_as_its_whole_row_does(record: FileRecord) -> None:
    whole = dict(zip(codec.FILE_COLUMNS, codec.file_to_row(record), strict=True))
    change = dict(zip(codec.FILE_CHANGE_COLUMNS, codec.file_change_to_row(record), strict=True))

    assert change == {name: whole[name] for name in codec.FILE_CHANGE_COLUMNS}
    # The columns left out are the upload's, which no change alters.
    assert set(whole) - set(change) == {"file_id", "name", "blob", "size"}


@given(attempts)
def test_an_attempt_survives_its_row_and_its_json(attempt: Attempt) -> None:
    assert codec.attempt_from_row(codec.attempt_to_row(attempt)) == attempt
    as_json = json.loads(json.dumps(codec.attempt_to_dict(attempt)))
    assert codec.attempt_from_dict(as_json) == attempt


@given(events())
def test_an_event_survives_its_json_with_the_file_it_carries(event: BatchEvent) -> None:
    assert codec.event_from_json(codec.event_to_json(event)) == event


def _as_json_writes(event: BatchEvent) -> str:
    """The event's stored form, by definition: its plain values as ``json`` writes them."""
    bulk = event.bulk
    return json.dumps(
        {
            "sequence": event.sequence,
            "batch_id": event.batch_id,
            "at": event.at,
            "batch_state": event.batch_state,
            "file": None if event.file is None else codec.file_to_dict(event.file),
            "reason": event.reason,
            "previous_state": event.previous_state,
            "bulk": None
            if bulk is None
            else {
                "file_ids": list(bulk.file_ids),
                "state": bulk.state,
                "error": None if bulk.error is None else codec.error_to_dict(bulk.error),
                **(
                    {}
                    if bulk.from_state is None
                    else {
                        "from_state": bulk.from_state,
                        "count": bulk.count,
                        "manual_retry": bulk.manual_retry,
                        "max_manual_retries": bulk.max_manual_retries,
                    }
                ),
            },
            "counts": dict(event.counts),
        },
        separators=(",", ":"),
    )


@given(events())
def test_an_event_is_stored_as_json_writes_its_values(event: BatchEvent) -> None:
    # Written as text directly, for speed: byte for byte what json writes.
    assert codec.event_to_json(event) == _as_json_writes(event)


@pytest.mark.parametrize(
    "moment", [float("inf"), float("-inf"), float("nan"), -0.0, 1e16, 1e-7, 0.1 + 0.2, 5]
)
def test_an_events_numbers_are_written_as_json_writes_them(moment: float) -> None:
    attempt = Attempt(1, moment, moment, AttemptOutcome.FAILED, None, None, moment)
    record = FileRecord("f", "f.pdf", "0" * 64, 1, attempts=(attempt,), next_attempt_at=moment)
    event = BatchEvent(1, "b", moment, BatchState.RUNNING, record)

    assert codec.event_to_json(event) == _as_json_writes(event)


def test_the_stored_form_of_events_does_not_change() -> None:
    # Events stored by earlier versions are read back and compared by their text (the
    # file history's queries read into it): the form is fixed, down to the byte.
    error = FileError(ErrorCode.PDF_MALFORMED, 7.25, 'Bad "xref"\ttable', True)
    record = FileRecord(
        "f-1",
        "Résumé 履歴書.pdf",
        "0" * 64,
        2048,
        FileState.BACKOFF,
        (
            Attempt(1, 5.0, 7.25, AttemptOutcome.FAILED, ErrorCode.PDF_MALFORMED, 321, 1.5),
            Attempt(2, 9),
        ),
        1,
        0,
        8.75,
        error,
        True,
        (ResultWarning(WarningCode.NO_TEXT_LAYER, "text", 2, 2),),
    )
    counts = dict.fromkeys(FileState, 0) | {FileState.PENDING: 3, FileState.BACKOFF: 1}
    event = BatchEvent(
        12, "b-ü", 1e16, BatchState.RUNNING, record, "attempt 1 failed", FileState.RUNNING,
        counts=counts,
    )  # fmt: skip
    cancel = BulkChange(
        (), FileState.CANCELLED, FileError(ErrorCode.CANCELLED, 3.0), FileState.PENDING, 3
    )
    bulk = BatchEvent(13, "b", -0.0, BatchState.CANCELLING, None, "stop", bulk=cancel)

    assert codec.event_to_json(event) == (
        '{"sequence":12,"batch_id":"b-\\u00fc","at":1e+16,"batch_state":"RUNNING","file":'
        '{"file_id":"f-1","name":"R\\u00e9sum\\u00e9 \\u5c65\\u6b74\\u66f8.pdf","blob":'
        '"0000000000000000000000000000000000000000000000000000000000000000","size":2048,'
        '"state":"BACKOFF","attempts":[{"number":1,"started_at":5.0,"ended_at":7.25,'
        '"outcome":"FAILED","code":"PDF_MALFORMED","worker_pid":321,"retry_delay":1.5},'
        '{"number":2,"started_at":9,"ended_at":null,"outcome":null,"code":null,'
        '"worker_pid":null,"retry_delay":null}],"round_failures":1,"manual_retries":0,'
        '"next_attempt_at":8.75,"error":{"code":"PDF_MALFORMED","at":7.25,'
        '"message":"Bad \\"xref\\"\\ttable","retryable":true},"encrypted_with_password":true,'
        '"warnings":[["NO_TEXT_LAYER","text",2,2]]},"reason":"attempt 1 failed",'
        '"previous_state":"RUNNING","bulk":null,"counts":{"PENDING":3,"RUNNING":0,'
        '"BACKOFF":1,"SUCCEEDED":0,"FAILED":0,"CANCELLED":0}}'
    )
    assert codec.event_to_json(bulk) == (
        '{"sequence":13,"batch_id":"b","at":-0.0,"batch_state":"CANCELLING","file":null,'
        '"reason":"stop","previous_state":null,"bulk":{"file_ids":[],"state":"CANCELLED",'
        '"error":{"code":"CANCELLED","at":3.0,"message":"","retryable":false},'
        '"from_state":"PENDING","count":3,"manual_retry":false,"max_manual_retries":0},'
        '"counts":{}}'
    )


@given(infos)
def test_document_information_survives_its_json(info: DocumentInfo) -> None:
    assert codec.info_from_json(codec.info_to_json(info)) == info


@given(details)
def test_document_details_survive_their_json(document: DocumentDetails) -> None:
    assert codec.details_from_json(codec.details_to_json(document)) == document


@given(st.lists(warnings, max_size=4))
def test_warnings_survive_their_json(stored: list[ResultWarning]) -> None:
    assert codec.warnings_from_json(codec.warnings_to_json(stored)) == tuple(stored)


def test_warnings_and_details_stored_before_they_grew_are_read() -> None:
    assert codec.warnings_from_json('[["CHARACTERS_REPLACED", "text", 3]]') == (
        ResultWarning(WarningCode.CHARACTERS_REPLACED, "text", 3, 0),
    )
    assert codec.details_from_json("{}") == DocumentDetails()


@given(st.dictionaries(st.sampled_from(FileState), counts), counts)
def test_counts_keep_the_files_with_warnings_beside_the_states(
    by_state: dict[FileState, int], warned: int
) -> None:
    text = codec.counts_to_json(by_state, warned)

    assert codec.counts_from_json(text) == {s: by_state.get(s, 0) for s in FileState}
    assert codec.warned_from_json(text) == warned
    assert codec.warned_from_json(codec.counts_to_json(by_state)) == 0


@given(policies())
def test_a_policy_survives_its_json_and_is_validated_again(policy: BatchPolicy) -> None:
    assert codec.policy_from_json(codec.policy_to_json(policy)) == policy


_ids = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLiteStore]:
    """One database for every example; each example stores a batch of its own."""
    opened = SQLiteStore(tmp_path_factory.mktemp("codec") / "db.sqlite3")
    yield opened
    opened.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches, records=st.lists(files(), max_size=5))
def test_a_batch_and_its_files_survive_the_sqlite_store(
    store: SQLiteStore, batch: BatchRecord, records: list[FileRecord]
) -> None:
    batch = dataclasses.replace(batch, batch_id=f"batch-{next(_ids)}", idempotency_key="")
    unique = tuple(
        dataclasses.replace(record, file_id=f"f{index:05d}") for index, record in enumerate(records)
    )
    store.create_batch(BatchView(batch, unique))
    assert store.load(batch.batch_id) == BatchView(batch, unique)
