"""Results fit to store: the pure rules, and one file's result inside a group commit.

The rules are checked against an oracle written here from Unicode's own categories,
over any string hypothesis can make. The runtime test feeds the supervisor results no
worker cleaned (an executor of its own hands them over as they are) and stores them in
a real SQLite file: a poison result must fail or be mended on its own, never the commit
of the other files.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from actors.execution.attempt import decode_reply, encode_reply, storable_reply
from actors.execution.classify import classify
from actors.execution.contract import (
    AttemptHandle,
    AttemptJob,
    AttemptSuccess,
    OnDone,
    OnStarted,
)
from actors.orchestration.clock import FakeScheduler
from actors.orchestration.runtime import NewFile, Runtime
from actors.policy.book import BatchBook
from actors.policy.catalogue import CATALOGUE, ErrorCode, ResultTooLargeError
from actors.policy.document import Attachment, DocumentDetails, OutlineEntry, PageInfo
from actors.policy.model import (
    DocumentInfo,
    ExtractionResult,
    FileState,
    ResultWarning,
    WarningCode,
)
from actors.policy.results import (
    TEXT_PIECE_CHARS,
    ResultLimits,
    make_storable,
    result_size,
    text_pieces,
)
from actors.policy.sealed import unseal
from actors.storage.blobs import BlobStore
from actors.storage.sqlite_schema import migrate
from actors.storage.sqlite_store import SQLiteStore
from tests.helpers.harness import Waiter
from tests.helpers.poison_pdfs import expected_text
from tests.helpers.records import new_batch, succeed


def _result(*pages: str, **info: str) -> ExtractionResult:
    return ExtractionResult(len(pages), False, DocumentInfo(**info), pages)


# Any code point, surrogates included, weighted toward the ones that break things.
_POISON = st.sampled_from(["\ud800", "\udfff", "\x00", "\x1b", "\x85", "\uffff", "\u202e"])
_ANY_TEXT = st.lists(st.one_of(st.characters(codec=None), _POISON), max_size=40).map("".join)


@given(pages=st.lists(_ANY_TEXT, max_size=4), title=_ANY_TEXT)
def test_any_text_becomes_storable_and_every_change_is_counted(
    pages: list[str], title: str
) -> None:
    limits = ResultLimits(max_metadata_field_bytes=1_000)

    stored = make_storable(_result(*pages, title=title), limits)

    expected = [expected_text(page) for page in pages]
    assert stored.pages == tuple(text for text, _ in expected)
    assert stored.info.title == expected_text(title)[0]
    counts = {w.place: w.count for w in stored.warnings}
    assert counts.get("text", 0) == sum(n for _, n in expected)
    assert counts.get("title", 0) == expected_text(title)[1]
    for text in (*stored.pages, stored.info.title):
        text.encode("utf-8")  # strict: no surrogate is left
    # Idempotent: a cleaned result passes again unchanged, warnings and all.
    assert make_storable(stored, limits) == stored


# Every code point of one or two bytes in UTF-8 (the C0 and C1 controls among them),
# every surrogate, and the ends of the planes above.
_CODE_POINTS = [*range(0x800), *range(0xD800, 0xE000), *range(0xFFF0, 0x10010), 0x10FFFF]


@pytest.mark.parametrize("before", ["", "a page of text " * 200])
@pytest.mark.parametrize("lead", ["", "é"])
def test_each_code_point_is_cleaned_as_the_oracle_says(before: str, lead: str) -> None:
    # Text that needs no change skips the regular expression: each character must
    # still be found, alone and inside a long page, ASCII or not.
    for point in _CODE_POINTS:
        page = f"{before}{lead}{chr(point)}\nmore text\n"

        stored = make_storable(_result(page), ResultLimits())

        assert (stored.pages[0], _replaced(stored, "text")) == expected_text(page)


def _replaced(result: ExtractionResult, place: str) -> int:
    return sum(w.count for w in result.warnings if w.place == place)


_STORABLE = st.characters(codec="utf-8", exclude_categories=("Cc",))


@given(title=st.text(_STORABLE, min_size=1, max_size=300), limit=st.integers(1, 200))
def test_a_metadata_field_over_its_limit_is_cut_on_a_character_boundary(
    title: str, limit: int
) -> None:
    stored = make_storable(_result("p", title=title), ResultLimits(max_metadata_field_bytes=limit))

    kept = stored.info.title
    assert kept is not None
    assert title.startswith(kept)
    assert len(kept.encode("utf-8")) <= limit
    cut = [w for w in stored.warnings if w.code is WarningCode.METADATA_TRUNCATED]
    if len(title.encode("utf-8")) <= limit:
        assert (kept, cut) == (title, [])
    else:
        # As much as fits: one more character would not.
        assert len(title[: len(kept) + 1].encode("utf-8")) > limit
        assert cut == [
            ResultWarning(WarningCode.METADATA_TRUNCATED, "title", len(title) - len(kept))
        ]


def test_text_over_its_limit_fails_the_file_with_a_limit_code() -> None:
    limits = ResultLimits(max_text_bytes=10)
    assert make_storable(_result("é" * 5), limits).pages == ("é" * 5,)  # exactly 10 bytes

    with pytest.raises(ResultTooLargeError) as raised:
        make_storable(_result("é" * 5, "x"), limits)

    assert raised.value.limit == 10
    assert classify(raised.value) is ErrorCode.PDF_LIMIT_EXCEEDED


@pytest.mark.parametrize(
    "broken",
    [
        "not a result",
        ExtractionResult(1, False, DocumentInfo(), (b"bytes",)),  # type: ignore[arg-type]
        ExtractionResult(1, False, DocumentInfo(title=7), ("p",)),  # type: ignore[arg-type]
        ExtractionResult(-1, False, DocumentInfo(), ()),
        ExtractionResult(2**31, False, DocumentInfo(), ()),
    ],
)
def test_what_is_not_a_result_of_strings_is_refused(broken: object) -> None:
    with pytest.raises(TypeError):
        make_storable(broken, ResultLimits())  # type: ignore[arg-type]


def test_a_worker_reply_carries_warnings_and_any_text_in_utf8() -> None:
    reply = storable_reply(_result("ok\ud800\u202e\uffff", title="日本"), ResultLimits())

    payload = encode_reply(reply)

    assert "日本".encode() in payload  # UTF-8, not six-byte escapes
    decoded = decode_reply(payload)
    assert decoded == reply
    assert reply.result.warnings == (ResultWarning(WarningCode.CHARACTERS_REPLACED, "text", 1),)


def test_text_pieces_cut_long_pages_and_keep_empty_ones() -> None:
    pages = ("a" * (TEXT_PIECE_CHARS + 1), "", "b")

    pieces = list(text_pieces(pages))

    assert [(n, part, len(text)) for n, part, text in pieces] == [
        (1, 0, TEXT_PIECE_CHARS),
        (1, 1, 1),
        (2, 0, 0),
        (3, 0, 1),
    ]
    assert result_size(_result(*pages, title="é")) == TEXT_PIECE_CHARS + 2 + 2


def test_warnings_read_as_sentences_and_refuse_unknown_places() -> None:
    replaced = ResultWarning(WarningCode.CHARACTERS_REPLACED, "text", 3)
    assert replaced.message.startswith("3 characters of the text could not be kept")
    one = ResultWarning(WarningCode.CHARACTERS_REPLACED, "author", 1)
    assert one.message.startswith("1 character of the document's author could not")
    cut = ResultWarning(WarningCode.METADATA_TRUNCATED, "title", 1_934_464)
    assert cut.message == (
        "The document's title was too long; its last 1,934,464 characters were cut off."
    )
    with pytest.raises(ValueError, match="place"):
        ResultWarning(WarningCode.CHARACTERS_REPLACED, "../etc", 1)
    with pytest.raises(ValueError, match="negative"):
        ResultWarning(WarningCode.CHARACTERS_REPLACED, "text", -1)


# One file's result inside a group commit -----------------------------------------------


class _Handed:
    def cancel(self, code: ErrorCode) -> None:
        del code


class _ResultsAsGiven:
    """An executor that answers each attempt at once with the result named by the upload's
    bytes, as it is: what an executor with no cleaning of its own would hand over."""

    def __init__(self, results: Mapping[bytes, object]) -> None:
        self._results = results
        self.submitted: list[str] = []

    def submit(self, job: AttemptJob, on_started: OnStarted, on_done: OnDone) -> AttemptHandle:
        self.submitted.append(job.file_id)
        on_started(None)
        result = self._results[job.read_blob()]
        on_done(AttemptSuccess(result, None))  # type: ignore[arg-type]
        return _Handed()

    def queued_seconds(self) -> float:
        return 0.0

    def cancel_batch(self, batch_id: str, code: ErrorCode) -> None:
        del batch_id, code

    def close(self) -> None:
        pass


@pytest.fixture
def sqlite_runtime(tmp_path: Path) -> Iterator[tuple[Runtime, SQLiteStore, BlobStore, Waiter]]:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    blobs = BlobStore(tmp_path / "blobs")
    clock = FakeScheduler()
    results: dict[bytes, object] = {
        b"plain": _result("plain text", title="Plain"),
        b"surrogates": _result("a\ud800b\x00c", "\udfff", title="t\udfff", author="\x00"),
        b"not-text": ExtractionResult(1, False, DocumentInfo(), (b"raw bytes",)),  # type: ignore[arg-type]
        b"too-big": _result("x" * 2_000),
    }
    executor = _ResultsAsGiven(results)
    runtime = Runtime(
        store=store,
        blobs=blobs,
        executor=executor,
        scheduler=clock,
        result_limits=ResultLimits(max_text_bytes=1_000),
    )
    waiter = Waiter(store)
    try:
        yield runtime, store, blobs, waiter
    finally:
        waiter.close()
        runtime.close()
        clock.close()
        store.close()


def test_a_poison_result_fails_or_is_mended_alone_and_the_others_are_stored(
    sqlite_runtime: tuple[Runtime, SQLiteStore, BlobStore, Waiter],
) -> None:
    runtime, store, blobs, waiter = sqlite_runtime
    contents = [b"plain", b"surrogates", b"plain", b"not-text", b"too-big", b"plain"]
    files = [NewFile(f"{n}.pdf", blobs.put(data), len(data)) for n, data in enumerate(contents)]

    with structlog.testing.capture_logs() as logs:
        batch_id = runtime.submit(files).batch.batch_id
        view = waiter.until(batch_id, lambda v: v.batch.state.terminal)

    assert view.batch.state.value == "PARTIALLY_SUCCEEDED"
    by_name = {f.name: f for f in view.files}
    for name in ("0.pdf", "1.pdf", "2.pdf", "5.pdf"):
        assert by_name[name].state is FileState.SUCCEEDED, name
        assert len(by_name[name].attempts) == 1, name
    unstorable = by_name["3.pdf"]
    assert (unstorable.state, unstorable.error.code) == (  # type: ignore[union-attr]
        FileState.FAILED,
        ErrorCode.RESULT_UNSTORABLE,
    )
    assert unstorable.error.message == CATALOGUE[ErrorCode.RESULT_UNSTORABLE].message  # type: ignore[union-attr]
    too_big = by_name["4.pdf"]
    assert too_big.error.code is ErrorCode.PDF_LIMIT_EXCEEDED  # type: ignore[union-attr]
    assert "1,000 bytes" in too_big.error.message  # type: ignore[union-attr]
    assert "max_result_text_bytes" in too_big.error.message  # type: ignore[union-attr]
    assert len(unstorable.attempts) == len(too_big.attempts) == 1
    assert not [entry for entry in logs if entry["event"] == "batch_supervisor_failed"]

    mended = store.load_result(batch_id, by_name["1.pdf"].file_id)
    assert mended is not None
    assert mended.pages == ("a\ufffdb\ufffdc", "\ufffd")
    assert (mended.info.title, mended.info.author) == ("t\ufffd", "\ufffd")
    assert {(w.place, w.count) for w in mended.warnings} == {
        ("text", 3),
        ("title", 1),
        ("author", 1),
    }
    # Stored as made storable: with its page's character count.
    assert store.load_result(batch_id, by_name["0.pdf"].file_id) == make_storable(
        _result("plain text", title="Plain"), ResultLimits()
    )


def test_result_text_is_read_in_order_a_few_pieces_at_a_time(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    try:
        pages = (*(f"page {n} " * 3 for n in range(9)), "z" * (TEXT_PIECE_CHARS * 2 + 1))
        _store_result(store, ExtractionResult(0, False, DocumentInfo(), ()))
        uploads = store.tenant_usage("alice")[1]
        store.delete_batch("b1")
        _store_result(store, _result(*pages))

        pieces = list(store.result_text("b1", "f00001"))

        assert [n for n, _ in pieces] == [*range(1, 10), 10, 10, 10]
        assert tuple(text for _, text in pieces[:9]) == pages[:9]
        assert "".join(text for _, text in pieces[9:]) == pages[9]
        summary = store.result_summary("b1", "f00001")
        assert summary is not None
        assert summary.stored_bytes == result_size(_result(*pages))
        assert store.tenant_usage("alice")[1] == uploads + summary.stored_bytes
        assert list(store.result_text("b1", "nothing")) == []
    finally:
        store.close()


def _store_result(store: SQLiteStore, result: ExtractionResult) -> None:
    store.create_batch(new_batch())
    book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
    store.commit(succeed(book, "f00001", 101.0), {"f00001": result})


def test_a_version_3_database_keeps_its_results_as_pieces(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("PRAGMA foreign_keys = ON")
        migrate(db, target=3)
        db.execute(
            "INSERT INTO batches (batch_id, name, policy, state, created_at, updated_at, "
            "sequence, reason, labels, owner, idempotency_key) "
            "VALUES ('b', 'n', '{}', 'SUCCEEDED', 0, 0, 0, '', '{}', 'alice', '')"
        )
        db.execute(
            "INSERT INTO files VALUES ('b', 0, 'f', 'a.pdf', 'd', 10, 'SUCCEEDED', 0, 0, "
            "NULL, NULL, 0)"
        )
        db.execute("INSERT INTO results VALUES ('b', 'f', 2, 0, '{\"title\": \"T\"}')")
        db.executemany("INSERT INTO result_pages VALUES ('b', 'f', ?, ?)", [(1, "one"), (2, "twö")])
    db.close()

    store = SQLiteStore(path)
    try:
        assert list(store.result_text("b", "f")) == [(1, "one"), (2, "twö")]
        summary = store.result_summary("b", "f")
        assert summary is not None
        assert (summary.info.title, summary.warnings) == ("T", ())
        assert summary.stored_bytes == len('{"title": "T"}') + 3 + 4
    finally:
        store.close()


def test_a_surrogate_pair_read_one_unit_at_a_time_is_its_character() -> None:
    stored = make_storable(_result("\ud83d\ude00 \ude00\ud83d"), ResultLimits())

    assert stored.pages == ("\U0001f600 \ufffd\ufffd",)
    assert stored.warnings == (ResultWarning(WarningCode.CHARACTERS_REPLACED, "text", 2),)


def test_details_are_bounded_cleaned_and_counted_once() -> None:
    details = DocumentDetails(
        pdf_version="1.7",
        pages=(PageInfo(612, 792, 450, 99), PageInfo(None, -5.0, 7, 0)),
        outline=tuple(OutlineEntry(f"t\x00{n}" * 3, n, 0) for n in range(5)),
        attachments=(Attachment("ok.csv", 3), Attachment("é" * 10, None)),
    )
    result = ExtractionResult(1, False, DocumentInfo(), ("ab", "c\x01", "xyz"), details=details)
    limits = ResultLimits(max_outline_entries=3, max_attachments=1, max_name_bytes=6)

    stored = make_storable(result, limits)

    # Characters counted from the stored text; rotation reduced; a negative size unknown;
    # a page with no details of its own gets its character count.
    assert stored.details.pages == (
        PageInfo(612.0, 792.0, 90, 2),
        PageInfo(None, None, 0, 2),
        PageInfo(None, None, 0, 3),
    )
    # "t\x000t\x000t\x000": cleaned, then cut to 6 bytes (U+FFFD takes 3).
    assert [e.title for e in stored.details.outline] == ["t\ufffd0t", "t\ufffd1t", "t\ufffd2t"]
    assert stored.details.attachments == (Attachment("ok.csv", 3),)
    by_place = {(w.code, w.place): w.count for w in stored.warnings}
    assert by_place[(WarningCode.CHARACTERS_REPLACED, "outline")] == 9
    # 9 characters replaced; 5 cut from each of 3 titles; 2 entries left out.
    assert sorted(w.count for w in stored.warnings if w.place == "outline") == [2, 9, 15]
    assert by_place[(WarningCode.PART_TRUNCATED, "attachments")] == 1
    assert make_storable(stored, limits) == stored


def test_a_page_count_over_the_details_limit_is_warned_once() -> None:
    limits = ResultLimits(max_page_details=2)
    result = ExtractionResult(3, False, DocumentInfo(), ("a", "b", "c"))

    stored = make_storable(result, limits)

    assert [page.characters for page in stored.details.pages] == [1, 1]
    assert stored.warnings == (ResultWarning(WarningCode.PART_TRUNCATED, "pages", 1),)
    assert make_storable(stored, limits).warnings == stored.warnings


def test_details_that_are_not_details_fail_the_result() -> None:
    broken = ExtractionResult(1, False, DocumentInfo(), ("a",), details="oops")  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="details must be DocumentDetails"):
        make_storable(broken, ResultLimits())


def test_a_reply_carries_the_details_and_warnings_whole() -> None:
    details = DocumentDetails(
        "1.4",
        (PageInfo(10.5, 20, 90, 1),),
        (OutlineEntry("Intro", None, 2),),
        (Attachment("a.bin", 7),),
        has_xmp=True,
    )
    warning = ResultWarning(WarningCode.PARTIAL_TEXT_LAYER, "text", 1, 2)
    result = ExtractionResult(2, False, DocumentInfo(), ("x", " "), (warning,), details)

    reply = storable_reply(result, ResultLimits())

    assert decode_reply(encode_reply(reply)) == reply
    assert unseal(reply.result).details.pages[0] == PageInfo(10.5, 20.0, 90, 1)
