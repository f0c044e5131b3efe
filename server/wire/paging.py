"""``ListBatches`` and ``ListFiles`` pages, with opaque tokens that survive new writes.

A ``ListBatches`` token names the last batch of its page by (creation time, id), so the
next page starts right after it however many batches were submitted since: no batch is
listed twice or skipped. A ``ListFiles`` token names the position of the page's last
file in its batch. A token only fits the batch and the filter it was made for. Each page
is one keyset query with a limit: its cost does not grow with what is stored.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Collection

import grpc

from actors.policy.model import BatchState, BatchSummary, FilePage, FileState
from actors.policy.refusals import BatchNotFound
from actors.storage.store import Store
from server.wire.errors import FieldViolation, WireError

__all__ = [
    "DEFAULT_FILES_PAGE_SIZE",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "file_page",
    "list_page",
]

DEFAULT_PAGE_SIZE = 50
DEFAULT_FILES_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
# Tokens given out are a few hundred characters; anything much longer is not one of them.
MAX_TOKEN_CHARS = 1_024


def _bad_token() -> WireError:
    message = "The page token is not one this listing gave out (or the filter changed)."
    return WireError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        message,
        violations=[FieldViolation("page_token", message)],
    )


def _filter_key(states: Collection[BatchState] | Collection[FileState]) -> list[str]:
    return sorted(state.value for state in states)


def _encode(payload: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def _decode(token: str) -> dict[str, object]:
    if len(token) > MAX_TOKEN_CHARS:
        raise _bad_token()
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
    # RecursionError: JSON nested deeper than the parser goes.
    except (binascii.Error, ValueError, TypeError, RecursionError):
        raise _bad_token() from None
    if not isinstance(payload, dict):
        raise _bad_token()
    return payload


def _batch_key(token: str, states: Collection[BatchState]) -> tuple[float, str]:
    payload = _decode(token)
    created_at, batch_id = payload.get("t"), payload.get("id")
    # Only a token made here: a finite number (not a bool, not an int too big for a
    # float) and a string id.
    valid = (
        type(created_at) in (int, float)
        and isinstance(batch_id, str)
        and _finite(created_at)  # type: ignore[arg-type]
        and payload.get("f") == _filter_key(states)
    )
    if not valid:
        raise _bad_token()
    return float(created_at), str(batch_id)  # type: ignore[arg-type]


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def _size(page_size: int, default: int) -> int:
    if page_size < 0:
        raise WireError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_SIZE",
            "page_size cannot be negative.",
            violations=[FieldViolation("page_size", "Cannot be negative.")],
        )
    return min(page_size or default, MAX_PAGE_SIZE)


def list_page(
    store: Store,
    page_size: int,
    page_token: str,
    states: Collection[BatchState],
    *,
    owner: str | None = None,
) -> tuple[list[BatchSummary], str]:
    """One page of batches, newest first, and the token of the next page ("" at the end).

    Args:
        store: Where the batches are.
        page_size: 1 to 1,000; 0 means 50; more than 1,000 means 1,000.
        page_token: "" for the first page, else a previous page's token.
        states: Only batches in these states; empty for all.
        owner: Only this owner's batches. Default ``None``: everyone's.

    Raises:
        WireError: ``INVALID_ARGUMENT`` for a negative size or a bad token.
    """
    size = _size(page_size, DEFAULT_PAGE_SIZE)
    before = _batch_key(page_token, states) if page_token else None
    # One more than the page: whether a next page exists, without counting.
    found = store.batch_summaries(owner=owner, states=states, before=before, limit=size + 1)
    page = found[:size]
    token = ""
    if len(found) > size:
        last = page[-1].batch
        token = _encode({"t": last.created_at, "id": last.batch_id, "f": _filter_key(states)})
    return page, token


def file_page(
    store: Store,
    batch_id: str,
    page_size: int,
    page_token: str,
    states: Collection[FileState],
) -> tuple[FilePage, str]:
    """One page of the batch's files, in submission order, and the next page's token.

    Args:
        store: Where the batch is.
        batch_id: The batch, whose existence and owner the caller checked.
        page_size: 1 to 1,000; 0 means 100; more than 1,000 means 1,000.
        page_token: "" for the first page, else a previous page's token.
        states: Only files in these states; empty for all.

    Raises:
        WireError: ``INVALID_ARGUMENT`` for a negative size or a bad token.
        BatchNotFound: The batch is gone.
    """
    size = _size(page_size, DEFAULT_FILES_PAGE_SIZE)
    after = -1
    if page_token:
        payload = _decode(page_token)
        position = payload.get("p")
        valid = (
            type(position) is int
            and 0 <= position < 2**62
            and payload.get("b") == batch_id
            and payload.get("f") == _filter_key(states)
        )
        if not valid:
            raise _bad_token()
        after = position  # type: ignore[assignment]
    page = store.file_page(batch_id, states=states, after_position=after, limit=size + 1)
    if page is None:
        raise BatchNotFound("No batch with this id exists.")
    token = ""
    if len(page.files) > size:
        page = FilePage(page.files[:size], page.total, page.sequence)
        token = _encode({"b": batch_id, "p": page.files[-1][0], "f": _filter_key(states)})
    return page, token
