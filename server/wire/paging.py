"""``ListBatches`` pages: newest first, with opaque tokens that survive new submissions.

A token names the last batch of its page by (creation time, id), so the next page starts
right after it however many batches were submitted since: no batch is listed twice or
skipped. A token only fits the filter it was made for.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Collection

import grpc

from actors.policy.model import BatchRecord, BatchState, BatchView
from actors.storage.store import Store
from server.wire.errors import FieldViolation, WireError

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "list_page"]

DEFAULT_PAGE_SIZE = 50
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


def _filter_key(states: Collection[BatchState]) -> list[str]:
    return sorted(state.value for state in states)


def _encode(last: BatchRecord, states: Collection[BatchState]) -> str:
    payload = {"t": last.created_at, "id": last.batch_id, "f": _filter_key(states)}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def _decode(token: str, states: Collection[BatchState]) -> tuple[float, str]:
    if len(token) > MAX_TOKEN_CHARS:
        raise _bad_token()
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        created_at, batch_id, filter_key = payload["t"], payload["id"], payload["f"]
    # RecursionError: JSON nested deeper than the parser goes.
    except (binascii.Error, ValueError, TypeError, KeyError, RecursionError):
        raise _bad_token() from None
    # Only a token made here: a finite number (not a bool, not an int too big for a
    # float) and a string id.
    valid = (
        type(created_at) in (int, float)
        and isinstance(batch_id, str)
        and _finite(created_at)
        and filter_key == _filter_key(states)
    )
    if not valid:
        raise _bad_token()
    return float(created_at), batch_id


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def list_page(
    store: Store,
    page_size: int,
    page_token: str,
    states: Collection[BatchState],
    *,
    owner: str | None = None,
) -> tuple[list[BatchView], str]:
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
    if page_size < 0:
        raise WireError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_SIZE",
            "page_size cannot be negative.",
            violations=[FieldViolation("page_size", "Cannot be negative.")],
        )
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    records = sorted(
        (
            r
            for r in store.list_batches()
            if (not states or r.state in states) and (owner is None or r.owner == owner)
        ),
        key=lambda r: (r.created_at, r.batch_id),
        reverse=True,
    )
    if page_token:
        after = _decode(page_token, states)
        records = [r for r in records if (r.created_at, r.batch_id) < after]
    page = records[:size]
    views = [view for r in page if (view := store.load(r.batch_id)) is not None]
    token = _encode(page[-1], states) if len(records) > size else ""
    return views, token
