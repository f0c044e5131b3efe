"""Sealed results: what a worker hands over, stored as it came.

Any result made storable seals and unseals to itself; anything that is not in the
stored form (escaped or raw surrogates, controls, wrong types, numbers protobuf cannot
carry, a size its texts cannot have) is refused on construction, and the limits are
checked apart. The store writes a sealed result in one statement per result.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.execution.attempt import WorkerFailed, decode_reply, encode_reply, storable_reply
from actors.policy.book import BatchBook
from actors.policy.catalogue import ErrorCode, ResultTooLargeError
from actors.policy.document import Attachment, DocumentDetails, OutlineEntry, PageInfo
from actors.policy.model import (
    BatchState,
    DocumentInfo,
    ExtractionResult,
    ResultWarning,
    WarningCode,
)
from actors.policy.results import TEXT_PIECE_CHARS, ResultLimits, make_storable, result_size
from actors.policy.sealed import SealedResult, _naturals_below, seal, unseal
from actors.storage.sqlite_store import SQLiteStore
from tests.helpers.records import new_batch, succeed

_ANY_TEXT = st.text(st.characters(codec=None), max_size=40)


def _sealed(**changes: object) -> SealedResult:
    """A valid sealed result with ``changes`` to its fields."""
    fields = dataclasses.asdict(
        seal(ExtractionResult(1, False, DocumentInfo(title="t"), ("text",)))
    )
    del fields["text_bytes"], fields["_has_names"]
    fields.update(changes)
    return SealedResult(**fields)


@given(
    pages=st.lists(_ANY_TEXT, max_size=4),
    title=st.one_of(st.none(), _ANY_TEXT),
    names=st.lists(_ANY_TEXT, max_size=3),
    width=st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
)
def test_any_storable_result_seals_and_unseals_to_itself(
    pages: list[str], title: str | None, names: list[str], width: float | None
) -> None:
    details = DocumentDetails(
        pdf_version="1.7",
        pages=(PageInfo(width, 10.5, 90, 0),),
        outline=tuple(OutlineEntry(name, n or None, n) for n, name in enumerate(names)),
        attachments=tuple(Attachment(name, 2**40) for name in names),
    )
    limits = ResultLimits()
    result = make_storable(
        ExtractionResult(len(pages), False, DocumentInfo(title=title), tuple(pages), (), details),
        limits,
    )

    sealed = seal(result)

    sealed.check_within(limits)
    assert unseal(sealed) == result
    assert sealed.stored_bytes == result_size(result)
    assert sealed.text_bytes == sum(len(page.encode()) for page in result.pages)
    assert decode_reply(encode_reply(storable_reply(result, limits))).result == sealed  # type: ignore[union-attr]


def test_a_long_page_is_sealed_in_pieces() -> None:
    page = "é" * (TEXT_PIECE_CHARS + 1)

    sealed = seal(ExtractionResult(2, False, DocumentInfo(), (page, "")))

    assert [len(piece) for piece in sealed.pages[0]] == [TEXT_PIECE_CHARS, 1]
    assert sealed.pages[1] == ("",)
    assert sealed.text_bytes == 2 * len(page)


@given(st.integers(min_value=0, max_value=2**64))
def test_the_numbers_a_protobuf_integer_carries_are_matched_exactly(number: int) -> None:
    for bound in (2**31, 2**63, 10, 1000):
        assert bool(re.fullmatch(_naturals_below(bound), str(number))) == (number < bound)
    assert not re.fullmatch(_naturals_below(2**31), "01")


_INFO = '{"title": "t", "author": null, "subject": null, "creator": null, "producer": null, "creation_date": null, "modification_date": null}'  # noqa: E501
_DETAILS = (
    '{"pdf_version":null,"pages":[[null,null,0,4]],"outline":%s,"attachments":[],"has_xmp":false}'
)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"info_json": _INFO.replace('"t"', '"\\ud800"')}, ValueError),
        ({"info_json": _INFO.replace('"t"', '"\\uDC00x"')}, ValueError),
        ({"info_json": _INFO.replace('"t"', '"\ud800"')}, ValueError),
        ({"info_json": _INFO.replace('"t"', '"a\nb"')}, ValueError),
        ({"info_json": _INFO.replace('"t"', '"a\x85b"')}, ValueError),
        ({"info_json": _INFO.replace('"t"', '"\\u0041"')}, ValueError),
        ({"info_json": _INFO.replace('"t"', "7")}, ValueError),
        ({"info_json": _INFO.replace(", ", ",")}, ValueError),
        ({"info_json": _INFO + " "}, ValueError),
        ({"details_json": _DETAILS % '[["x",2147483648,0]]'}, ValueError),
        ({"details_json": _DETAILS % '[["x",1,"0"]]'}, ValueError),
        ({"details_json": _DETAILS % '[["\\udbff\\udfff",1,0]]'}, ValueError),
        ({"details_json": "{}"}, ValueError),
        ({"details_json": (_DETAILS % "[]").replace("null", '"' + "1" * 33 + '"', 1)}, ValueError),
        ({"pages": (("te\udc80t",),)}, ValueError),
        ({"pages": (("x" * (TEXT_PIECE_CHARS + 1),),), "stored_bytes": 0}, ValueError),
        ({"pages": ("text",)}, TypeError),
        ({"pages": ((),)}, TypeError),
        ({"pages": ((b"text",),)}, TypeError),
        ({"pages": [("text",)]}, TypeError),
        ({"page_count": True}, ValueError),
        ({"page_count": 2**31}, ValueError),
        ({"encrypted": 0}, TypeError),
        ({"warnings": ["CHARACTERS_REPLACED"]}, TypeError),
        ({"warnings": (ResultWarning(WarningCode.NO_TEXT_LAYER, "text", 1),) * 1000}, ValueError),
        ({"stored_bytes": 3}, ValueError),
        ({"stored_bytes": 10_000}, ValueError),
        ({"stored_bytes": 5.0}, ValueError),
    ],
)
def test_what_is_not_in_the_stored_form_is_refused(
    changes: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        _sealed(**changes)


def test_an_escaped_backslash_before_a_u_is_text_not_a_surrogate() -> None:
    sealed = _sealed(info_json=_INFO.replace('"t"', '"\\\\ud800"'))

    assert unseal(sealed).info.title == "\\ud800"


def test_the_limits_are_checked_apart_from_the_form() -> None:
    limits = ResultLimits(
        max_text_bytes=10, max_metadata_field_bytes=4, max_outline_entries=1, max_name_bytes=3
    )
    within = ExtractionResult(1, False, DocumentInfo(title="abcd"), ("0123456789",))
    seal(within).check_within(limits)

    with pytest.raises(ResultTooLargeError):
        seal(dataclasses.replace(within, pages=("0123456789", "é"))).check_within(limits)
    with pytest.raises(ValueError, match="title"):
        seal(dataclasses.replace(within, info=DocumentInfo(title="abcdé"))).check_within(limits)
    entry = OutlineEntry("abc", 1, 0)
    seal(dataclasses.replace(within, details=DocumentDetails(outline=(entry,)))).check_within(
        limits
    )
    for details in (
        DocumentDetails(outline=(entry, entry)),
        DocumentDetails(outline=(OutlineEntry("abcd", 1, 0),)),
        DocumentDetails(attachments=(Attachment("abcd", None),)),
    ):
        with pytest.raises(ValueError, match="over their limits"):
            seal(dataclasses.replace(within, details=details)).check_within(limits)


def test_a_reply_that_is_not_utf8_fails_its_attempt_not_the_worker() -> None:
    reply = encode_reply(
        storable_reply(ExtractionResult(1, False, DocumentInfo(), ("ab",)), ResultLimits())
    )
    assert reply.endswith(b"ab")  # the text follows the head, as it is

    for broken in (reply[:-2] + b"a\xc3", reply[:-1], reply + b"c"):
        outcome = decode_reply(broken)

        assert isinstance(outcome, WorkerFailed)
        assert (outcome.code, outcome.worker_exiting) == (ErrorCode.RESULT_UNSTORABLE, False)
    head_size = int.from_bytes(reply[:4], "little")
    for malformed in (
        reply[: 4 + head_size - 1],
        reply[:3],
        b"\x02\x00\x00\x00[]",
        reply[:4] + reply[4 : 4 + head_size].replace(b"{", b"[", 1) + b"ab",
    ):
        with pytest.raises(ValueError, match="malformed"):
            decode_reply(malformed)
    failed = encode_reply(WorkerFailed(ErrorCode.INTERNAL, "E", "detail"))
    assert decode_reply(failed) == WorkerFailed(ErrorCode.INTERNAL, "E", "detail")
    with pytest.raises(ValueError, match="malformed"):
        decode_reply(failed + b"text")


def test_a_result_stored_again_replaces_the_first_and_its_text(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    try:
        store.create_batch(new_batch())
        book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
        first = ExtractionResult(3, False, DocumentInfo(title="one"), ("a", "b", "c"))
        store.commit(succeed(book, "f00001", 101.0), {"f00001": seal(first)})
        second = ExtractionResult(1, True, DocumentInfo(title="two"), ("z",))
        book.set_batch(BatchState.RUNNING, 102.0)

        store.commit(book.take_changes(), {"f00001": seal(second)})

        assert store.load_result("b1", "f00001") == second
        assert list(store.result_text("b1", "f00001")) == [(1, "z")]
    finally:
        store.close()
