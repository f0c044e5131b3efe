"""``ListBatches``, ``ListFiles`` and ``GetFileHistory`` pages, with opaque tokens that
survive new writes and cannot be forged.

A ``ListBatches`` token names the last batch of its page by (creation time, id), so the
next page starts right after it however many batches were submitted since: no batch is
listed twice or skipped. A ``ListFiles`` token names the position of the page's last
file in its batch; a history token the last event and the last request a page showed.
Each page is one keyset query per source with a limit: its cost does not grow with what
is stored.

Tokens are signed (:class:`PageTokens`): the signature covers the position and what the
token is bound to, the listing, the caller, the batch, the file and the filter. A token
from another batch, file, filter or caller, or one edited by hand, is refused with
``INVALID_PAGE_TOKEN`` before anything is read. (Positions alone would do no harm, but
a token that reads as another caller's cursor invites guessing; a signed one says
"made here, for you, for this listing" and nothing else.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import grpc

from actors.policy.bulk import moved_by_state
from actors.policy.model import (
    AuditEntry,
    BatchEvent,
    BatchState,
    BatchSummary,
    FilePage,
    FileState,
)
from actors.policy.refusals import BatchNotFound
from actors.storage.store import Store
from server.wire.errors import FieldViolation, WireError

__all__ = [
    "DEFAULT_FILES_PAGE_SIZE",
    "DEFAULT_HISTORY_PAGE_SIZE",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "HistoryPage",
    "PageTokens",
    "file_page",
    "history_page",
    "list_page",
]

DEFAULT_PAGE_SIZE = 50
DEFAULT_FILES_PAGE_SIZE = 100
DEFAULT_HISTORY_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
# Tokens given out are a few hundred characters; anything much longer is not one of them.
MAX_TOKEN_CHARS = 1_024
KEY_BYTES = 32
# A truncated HMAC-SHA256: 128 bits are beyond guessing, and keep tokens short.
_MAC_BYTES = 16


def _bad_token() -> WireError:
    message = (
        "The page token is not one this listing gave out for this request (another "
        "batch, file, filter or caller, or edited); start again without a token."
    )
    return WireError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        message,
        violations=[FieldViolation("page_token", message)],
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PageTokens:
    """Makes and checks the page tokens of one service.

    A token is ``<position>.<signature>``: the position (JSON, base64url) and an HMAC of
    the listing's name, what the token is bound to, and the position, under the
    service's key. The key must outlive restarts for tokens to (the service keeps it in
    its data directory); a new key only makes clients start their listings again.

    Args:
        key: At least 32 secret bytes.

    Raises:
        ValueError: The key is shorter.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"a page-token key needs at least {KEY_BYTES} bytes")
        self._key = key

    @classmethod
    def generate(cls) -> PageTokens:
        """Tokens under a new random key (valid for this process's life)."""
        return cls(secrets.token_bytes(KEY_BYTES))

    def _mac(self, listing: str, binding: Sequence[object], body: str) -> bytes:
        signed = json.dumps([listing, list(binding), body]).encode()
        return hmac.new(self._key, signed, hashlib.sha256).digest()[:_MAC_BYTES]

    def make(self, listing: str, binding: Sequence[object], position: Mapping[str, object]) -> str:
        """The token of ``position`` in ``listing``, valid only with ``binding``."""
        body = _b64(json.dumps(position, separators=(",", ":")).encode())
        return f"{body}.{_b64(self._mac(listing, binding, body))}"

    def read(self, listing: str, binding: Sequence[object], token: str) -> dict[str, object]:
        """The position a token made by :meth:`make` with the same listing and binding
        holds.

        Raises:
            WireError: ``INVALID_ARGUMENT`` ``INVALID_PAGE_TOKEN`` for any other text.
        """
        body, dot, mac = token.partition(".")
        if len(token) > MAX_TOKEN_CHARS or not dot:
            raise _bad_token()
        try:
            given = _unb64(mac)
        except (binascii.Error, ValueError):
            raise _bad_token() from None
        if not hmac.compare_digest(given, self._mac(listing, binding, body)):
            raise _bad_token()
        try:
            payload = json.loads(_unb64(body))
        # RecursionError: JSON nested deeper than the parser goes (a key of ours would
        # never sign such a thing, but a check costs nothing).
        except (binascii.Error, ValueError, TypeError, RecursionError):
            raise _bad_token() from None
        if not isinstance(payload, dict):
            raise _bad_token()
        return payload


def _filter_key(states: Collection[BatchState] | Collection[FileState]) -> list[str]:
    return sorted(state.value for state in states)


def _finite(number: object) -> bool:
    if type(number) not in (int, float):
        return False
    try:
        return math.isfinite(number)  # type: ignore[arg-type]
    except OverflowError:
        return False


def _position(payload: dict[str, object], name: str) -> int:
    """A non-negative int of the payload (not a bool, not a float)."""
    value = payload.get(name)
    if type(value) is not int or not 0 <= value < 2**62:
        raise _bad_token()
    return value


def _size(page_size: int, default: int) -> int:
    if page_size < 0:
        raise WireError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_SIZE",
            f"page_size cannot be negative: use 1 to {MAX_PAGE_SIZE}, or 0 for {default}.",
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
    tokens: PageTokens,
) -> tuple[list[BatchSummary], str]:
    """One page of batches, newest first, and the token of the next page ("" at the end).

    Args:
        store: Where the batches are.
        page_size: 1 to 1,000; 0 means 50; more than 1,000 means 1,000.
        page_token: "" for the first page, else a previous page's token.
        states: Only batches in these states; empty for all.
        owner: Only this owner's batches. Default ``None``: everyone's.
        tokens: Signs and checks the tokens.

    Raises:
        WireError: ``INVALID_ARGUMENT`` for a negative size or a bad token.
    """
    size = _size(page_size, DEFAULT_PAGE_SIZE)
    binding = [owner, _filter_key(states)]
    before = None
    if page_token:
        payload = tokens.read("batches", binding, page_token)
        created_at, batch_id = payload.get("t"), payload.get("id")
        if not (_finite(created_at) and isinstance(batch_id, str)):
            raise _bad_token()
        before = (float(created_at), batch_id)  # type: ignore[arg-type]
    # One more than the page: whether a next page exists, without counting.
    found = store.batch_summaries(owner=owner, states=states, before=before, limit=size + 1)
    page = found[:size]
    token = ""
    if len(found) > size:
        last = page[-1].batch
        token = tokens.make("batches", binding, {"t": last.created_at, "id": last.batch_id})
    return page, token


def file_page(
    store: Store,
    batch_id: str,
    page_size: int,
    page_token: str,
    states: Collection[FileState],
    *,
    caller: str = "",
    tokens: PageTokens,
) -> tuple[FilePage, str]:
    """One page of the batch's files, in submission order, and the next page's token.

    Args:
        store: Where the batch is.
        batch_id: The batch, whose existence and owner the caller checked.
        page_size: 1 to 1,000; 0 means 100; more than 1,000 means 1,000.
        page_token: "" for the first page, else a previous page's token.
        states: Only files in these states; empty for all.
        caller: Who asks; the token fits only their requests.
        tokens: Signs and checks the tokens.

    Raises:
        WireError: ``INVALID_ARGUMENT`` for a negative size or a bad token.
        BatchNotFound: The batch is gone.
    """
    size = _size(page_size, DEFAULT_FILES_PAGE_SIZE)
    binding = [caller, batch_id, _filter_key(states)]
    after = -1
    if page_token:
        after = _position(tokens.read("files", binding, page_token), "p")
    page = store.file_page(batch_id, states=states, after_position=after, limit=size + 1)
    if page is None:
        raise BatchNotFound("No batch with this id exists.")
    token = ""
    if len(page.files) > size:
        page = FilePage(page.files[:size], page.total, page.sequence)
        token = tokens.make("files", binding, {"p": page.files[-1][0]})
    return page, token


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One page of a file's history: its entries oldest first, and the next token.

    Attributes:
        entries: Events that changed the file, each with the state the file left
            (``None`` where the history kept does not tell), and audited requests,
            merged by time.
        token: The next page's token; "" on the last page.
    """

    entries: list[tuple[BatchEvent, FileState | None] | AuditEntry]
    token: str


def _state_of(payload: dict[str, object]) -> FileState | None:
    state = payload.get("s")
    if state is None:
        return None
    if not isinstance(state, str) or state not in FileState.__members__:
        raise _bad_token()
    return FileState[state]


def history_page(
    store: Store,
    batch_id: str,
    file_id: str,
    page_size: int,
    page_token: str,
    *,
    caller: str,
    tokens: PageTokens,
    current_state: FileState,
) -> HistoryPage:
    """One page of a file's history: its state changes and the caller's requests about
    its batch, merged by time.

    The file's events and the requests are two streams, each read from where the last
    page stopped (a keyset per stream) for at most a page each; the page is the oldest
    ``page_size`` of both. The token keeps both positions, the newest request when the
    first page was read (requests after it, such as the listing's own calls, are left
    out), and the file's state after the page, which a bulk change (that does not say
    where each file came from) needs to tell where the file was.

    Args:
        store: Where the batch is.
        batch_id: The batch, whose owner (``caller``) the caller checked.
        file_id: The file, which the caller checked exists.
        page_size: 1 to 1,000; 0 means 100; more than 1,000 means 1,000.
        page_token: "" for the first page, else a previous page's token.
        caller: The batch's owner, whose requests are listed; tokens fit only theirs.
        tokens: Signs and checks the tokens.
        current_state: The file's state now: whether a retry by state that no later
            change of the file tells about moved it.

    Raises:
        WireError: ``INVALID_ARGUMENT`` for a negative size or a bad token.
    """
    size = _size(page_size, DEFAULT_HISTORY_PAGE_SIZE)
    binding = [caller, batch_id, file_id]
    if page_token:
        payload = tokens.read("history", binding, page_token)
        after_event, after_request = _position(payload, "e"), _position(payload, "a")
        until: int | None = _position(payload, "u")
        state = _state_of(payload)
    else:
        after_event = after_request = 0
        until = None
        # Every file starts PENDING; unknown if the oldest events are no longer kept.
        state = FileState.PENDING if store.oldest_sequence(batch_id) == 1 else None
    found = store.file_history(
        batch_id,
        file_id,
        caller=caller,
        after_sequence=after_event,
        after_request=after_request,
        until_request=until,
        limit=size + 1,
    )
    events, requests = list(found.events), list(found.requests)

    def next_own(after: int) -> BatchEvent | None:
        """The file's first own change after sequence ``after``."""
        ahead = store.file_history(
            batch_id,
            file_id,
            caller=caller,
            after_sequence=after,
            after_request=0,
            until_request=0,
            limit=1,
        )
        return next((e for e in ahead.events if e.file is not None), None)

    # A kind read to its limit may have more beyond; a page may end short of ``size``
    # when changes by state that did not move the file were skipped.
    more = len(events) > size or len(requests) > size
    entries: list[tuple[BatchEvent, FileState | None] | AuditEntry] = []
    while len(entries) < size and (events or requests):
        # The older head next; on a tie the state change, as it was committed first.
        if events and (not requests or events[0].at <= requests[0][1].at):
            event = events.pop(0)
            after_event = event.sequence
            if event.file is not None:
                previous: FileState | BatchState | None = event.previous_state
                state = event.file.state
            elif event.bulk is not None and (
                file_id in event.bulk.file_ids
                or moved_by_state(event, state, events, next_own, current_state)
            ):
                # A bulk change does not say where each file came from; the file's own
                # history does, unless it starts beyond the events still kept.
                previous, state = state, event.bulk.state
            else:
                continue
            entries.append((event, previous if isinstance(previous, FileState) else None))
        else:
            after_request, entry = requests.pop(0)
            entries.append(entry)
    token = ""
    if events or requests or more:
        position = {
            "e": after_event,
            "a": after_request,
            # The requests as of the first page: the listing's own calls, audited as
            # it goes, are not chased.
            "u": found.newest_request if until is None else until,
            "s": state.name if state else None,
        }
        token = tokens.make("history", binding, position)
    return HistoryPage(entries, token)
