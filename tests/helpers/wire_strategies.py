"""Hypothesis strategies for every request message of ``pdfbatch.v1.BatchService``.

Field values range over what a careless or hostile client can send: empty, huge,
unicode, NUL and control characters, path-like names, negative and enormous integers,
unknown enum values, durations out of any range. Where the test needs to know whether
a value is certainly valid or certainly invalid (a spec, a file name), the strategy
says so along with the message, from the rules the proto file documents.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import duration_pb2
from hypothesis import strategies as st

from server.gen.pdfbatch.v1 import batch_pb2 as pb

T = TypeVar("T")

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

NASTY_TEXTS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t\n\r",
    "\x7f",
    "\x1b[31mred",
    ".",
    "..",
    "/",
    "a/b",
    "../../etc/passwd",
    "..\\..\\boot.ini",
    "C:\\x",
    "\u202efdp.exe",
    "\ufeffbom",
    "\u0301",
    "💥.pdf",
    "名前.pdf",
    "%s%n%x",
    "' OR 1=1 --",
    "{}",
    "null",
)
# Codes of the error catalogue that a policy may name; anything else is refused.
CATALOGUE_CODES = ("PROCESSING_TIMEOUT", "WORKER_CRASHED", "NOT_A_PDF")
# Documented in batch.proto (FileHeader.name).
# Characters that make a name print as another: controls, format characters, separators.
_HIDING = frozenset({"Cc", "Cf", "Zl", "Zp"})


def huge_texts() -> st.SearchStrategy[str]:
    """Strings of 1,000 to 200,000 characters, well inside gRPC's 4 MiB message limit."""
    pieces = st.sampled_from(["x", "é", "\x00", "名", "💥", "/"])
    return st.builds(operator.mul, pieces, st.integers(1_000, 200_000))


def texts(max_size: int = 40) -> st.SearchStrategy[str]:
    """Any string a client can send: nasty ones, arbitrary unicode, huge ones."""
    return st.one_of(
        st.sampled_from(NASTY_TEXTS),
        st.text(max_size=max_size),
        huge_texts(),
    )


def int32s() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([0, -1, 1, *INT32]), st.integers(*INT32))


def int64s() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([0, -1, 1, *INT64]), st.integers(*INT64))


def unknown_ids() -> st.SearchStrategy[str]:
    """Ids shaped like the service's own, naming nothing."""
    return st.builds(_fresh_id)


def pick(known: Callable[[], Sequence[T]], otherwise: Callable[[], T]) -> st.SearchStrategy[T]:
    """One of ``known()`` as it is when drawn, else ``otherwise()``.

    The draw is an index whatever the server holds, so that Hypothesis sees the same
    kind of choices in every example while the set of real ids grows and shrinks.
    """

    def choose(index: int) -> T:
        items = known()
        return items[index % len(items)] if items else otherwise()

    return st.integers(0, 2**16).map(choose)


def ids(known: Callable[[], Sequence[str]]) -> st.SearchStrategy[str]:
    """An id: one of ``known()``, one shaped right that names nothing, or any string."""
    real = pick(known, _fresh_id)
    return st.one_of(real, real, real, unknown_ids(), texts())


def _fresh_id() -> str:
    return uuid.uuid4().hex


def durations() -> st.SearchStrategy[duration_pb2.Duration]:
    return st.builds(
        duration_pb2.Duration,
        seconds=st.one_of(st.integers(-10, 100_000), st.integers(*INT64)),
        nanos=st.one_of(st.integers(0, 999_999_999), st.integers(*INT32)),
    )


def floats() -> st.SearchStrategy[float]:
    return st.one_of(st.floats(-1e3, 1e3), st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def arbitrary_policies(draw: st.DrawFn) -> pb.BatchPolicy:
    """A policy whose every field may be set to anything."""
    policy = pb.BatchPolicy()
    if draw(st.booleans()):
        retry = policy.retry
        retry.SetInParent()
        if draw(st.booleans()):
            retry.max_attempts = draw(int32s())
        if draw(st.booleans()):
            retry.initial_backoff.CopyFrom(draw(durations()))
        if draw(st.booleans()):
            retry.max_backoff.CopyFrom(draw(durations()))
        if draw(st.booleans()):
            retry.multiplier = draw(floats())
        retry.jitter = draw(st.one_of(st.sampled_from([0, 1, 2]), int32s()))
        retry.non_retryable_codes.extend(
            draw(st.lists(st.one_of(st.sampled_from(CATALOGUE_CODES), texts()), max_size=3))
        )
    if draw(st.booleans()):
        policy.max_concurrency = draw(int32s())
    if draw(st.booleans()):
        policy.file_timeout.CopyFrom(draw(durations()))
    if draw(st.booleans()):
        policy.tolerated_failures.SetInParent()
        if draw(st.booleans()):
            policy.tolerated_failures.max_failed_files = draw(int32s())
        if draw(st.booleans()):
            policy.tolerated_failures.max_failed_percent = draw(floats())
    if draw(st.booleans()):
        policy.restart_intensity.SetInParent()
        if draw(st.booleans()):
            policy.restart_intensity.max_restarts = draw(int32s())
        if draw(st.booleans()):
            policy.restart_intensity.within.CopyFrom(draw(durations()))
    if draw(st.booleans()):
        policy.max_manual_retries = draw(int32s())
    return policy


@st.composite
def valid_policies(draw: st.DrawFn) -> pb.BatchPolicy:
    """A policy inside every documented range (mostly the defaults)."""
    policy = pb.BatchPolicy()
    if draw(st.booleans()):
        policy.retry.max_attempts = draw(st.integers(1, 100))
        initial = draw(st.integers(1, 60_000))
        policy.retry.initial_backoff.FromMilliseconds(initial)
        policy.retry.max_backoff.FromMilliseconds(draw(st.integers(initial, 86_400_000)))
        policy.retry.multiplier = draw(st.floats(1.0, 100.0))
        policy.retry.jitter = draw(st.sampled_from([pb.JITTER_FULL, pb.JITTER_NONE]))
        policy.retry.non_retryable_codes.extend(draw(st.lists(st.sampled_from(CATALOGUE_CODES))))
    if draw(st.booleans()):
        policy.max_concurrency = draw(st.integers(1, 1024))
    if draw(st.booleans()):
        policy.max_manual_retries = draw(st.integers(0, 1000))
    return policy


# One defect each: a spec with exactly one of these is certainly invalid.
_POLICY_DEFECTS = st.one_of(
    st.tuples(st.just("retry.max_attempts"), st.sampled_from([0, -1, 101, INT32[1], INT32[0]])),
    st.tuples(st.just("retry.multiplier"), st.sampled_from([0.5, -1.0, 101.0, float("nan")])),
    st.tuples(st.just("retry.jitter"), st.sampled_from([3, -1, INT32[1]])),
    st.tuples(st.just("retry.non_retryable_codes"), st.sampled_from(["NOT_A_CODE", "", "\x00"])),
    st.tuples(st.just("retry.initial_backoff"), st.sampled_from([0, -5, 3601])),
    st.tuples(st.just("max_concurrency"), st.sampled_from([0, -1, 1025, INT32[0]])),
    st.tuples(st.just("file_timeout"), st.sampled_from([0, -1, 86_401])),
    st.tuples(st.just("tolerated_failures.max_failed_files"), st.sampled_from([-1, INT32[0]])),
    st.tuples(
        st.just("tolerated_failures.max_failed_percent"),
        st.sampled_from([-0.5, 100.5, float("nan"), float("inf")]),
    ),
    st.tuples(st.just("restart_intensity.max_restarts"), st.sampled_from([-1, INT32[0]])),
    st.tuples(st.just("restart_intensity.within"), st.sampled_from([0, -60])),
    st.tuples(st.just("max_manual_retries"), st.sampled_from([-1, 1001, INT32[1]])),
)
_SPEC_DEFECTS = st.one_of(
    st.tuples(st.just("display_name"), st.sampled_from(["x" * 201, "a\x00b", "line\nbreak"])),
    st.tuples(
        st.just("idempotency_key"), st.sampled_from(["has space", "k" * 129, "ключ", "a\tb"])
    ),
    st.tuples(
        st.just("labels"),
        st.sampled_from(
            [
                {"": "v"},
                {"k" * 64: "v"},
                {"k": "v" * 257},
                {"k\x00": "v"},
                {"k": "v\n"},
                {f"k{n}": "v" for n in range(65)},
            ]
        ),
    ),
)


def _apply_policy_defect(policy: pb.BatchPolicy, field: str, value: object) -> None:
    match field:
        case "retry.initial_backoff":
            assert isinstance(value, int)
            policy.retry.initial_backoff.FromSeconds(value)
        case "file_timeout" | "restart_intensity.within":
            assert isinstance(value, int)
            target = (
                policy.file_timeout if field == "file_timeout" else policy.restart_intensity.within
            )
            target.FromSeconds(value)
        case "retry.non_retryable_codes":
            policy.retry.non_retryable_codes.append(str(value))
        case _:
            *parents, leaf = field.split(".")
            message = policy
            for parent in parents:
                message = getattr(message, parent)
            setattr(message, leaf, value)


@dataclass(frozen=True)
class SpecCase:
    """A spec, and whether it is certainly valid (True), invalid (False) or unknown."""

    spec: pb.BatchSpec
    valid: bool | None


def _printable(max_size: int) -> st.SearchStrategy[str]:
    """Text a name or label may hold: no control, format or separator character."""
    characters = st.characters(codec="utf-8", exclude_categories=tuple(_HIDING))
    return st.text(characters, max_size=max_size)


@st.composite
def valid_specs(draw: st.DrawFn, keys: Sequence[str] = ("",)) -> pb.BatchSpec:
    return pb.BatchSpec(
        display_name=draw(_printable(30)),
        policy=draw(valid_policies()),
        labels=draw(
            st.dictionaries(st.text("abc-_.", min_size=1, max_size=8), _printable(10), max_size=3)
        ),
        idempotency_key=draw(st.sampled_from(list(keys))),
    )


@st.composite
def spec_cases(draw: st.DrawFn, keys: Sequence[str] = ("",)) -> SpecCase:
    """Valid specs, specs with exactly one defect, and specs of any content."""
    kind = draw(st.sampled_from(["valid"] * 6 + ["defect", "policy-defect", "arbitrary"]))
    if kind == "arbitrary":
        spec = pb.BatchSpec(
            display_name=draw(texts()),
            policy=draw(arbitrary_policies()),
            labels=draw(st.dictionaries(texts(), texts(), max_size=3)),
            idempotency_key=draw(st.one_of(st.sampled_from(list(keys)), texts())),
        )
        return SpecCase(spec, None)
    spec = draw(valid_specs(keys))
    if kind == "defect":
        field, value = draw(_SPEC_DEFECTS)
        if field == "labels":
            assert isinstance(value, dict)
            spec.labels.clear()
            spec.labels.update(value)
        else:
            setattr(spec, field, value)
    elif kind == "policy-defect":
        spec.policy.Clear()  # a valid policy's backoffs could mask a backoff defect
        _apply_policy_defect(spec.policy, *draw(_POLICY_DEFECTS))
    return SpecCase(spec, kind == "valid")


def name_is_valid(name: str, max_chars: int) -> bool:
    """The rule of ``FileHeader.name``: a label of 1..max characters, not a path."""
    return (
        1 <= len(name) <= max_chars
        and "/" not in name
        and "\\" not in name
        and name not in (".", "..")
        and not any(unicodedata.category(char) in _HIDING for char in name)
    )


def file_names() -> st.SearchStrategy[str]:
    """Mostly good names (some repeated in a batch), then anything at all."""
    pool = st.sampled_from(["a.pdf", "b.pdf", "report 2024.pdf", "名前.pdf", "💥", "x" * 64])
    made = st.text("abcXYZ019 ._-é名💥", min_size=1, max_size=30).filter(lambda n: "." != n != "..")
    bad = st.one_of(st.sampled_from(["x" * 65, "x" * 255]), texts())
    return st.sampled_from([pool, made, made, made, made, made, bad]).flatmap(lambda kind: kind)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Requests of the unary and server-streaming RPCs ---------------------------------------


@dataclass(frozen=True)
class PageToken:
    """A token a listing gave out, and the filter it was given out for."""

    token: str
    states: tuple[int, ...]


def _states() -> st.SearchStrategy[list[int]]:
    valid = st.integers(1, 7)
    return st.lists(st.one_of(valid, valid, valid, st.integers(-1, 9), int32s()), max_size=3)


def _file_states() -> st.SearchStrategy[list[int]]:
    valid = st.integers(1, 6)
    return st.lists(st.one_of(valid, valid, valid, st.integers(-1, 8), int32s()), max_size=3)


def list_requests(
    tokens: Callable[[], Sequence[PageToken]],
) -> st.SearchStrategy[pb.ListBatchesRequest]:
    arbitrary = st.builds(
        pb.ListBatchesRequest,
        page_size=st.one_of(st.integers(-2, 3), int32s()),
        page_token=st.one_of(st.just(""), texts()),
        states=_states(),
    )
    given = st.builds(
        lambda t, size, other: pb.ListBatchesRequest(
            page_size=size, page_token=t.token, states=other if other is not None else t.states
        ),
        pick(tokens, lambda: PageToken("", ())),
        st.integers(0, 3),
        st.one_of(st.none(), _states()),
    )
    return st.one_of(arbitrary, given)


@dataclass(frozen=True)
class Known:
    """What the server holds now, read afresh at each draw."""

    batch_ids: Callable[[], Sequence[str]]
    file_ids: Callable[[], Sequence[str]]
    tokens: Callable[[], Sequence[PageToken]]
    deletable: Callable[[], Sequence[str]]


def views() -> st.SearchStrategy[int]:
    """A ``BatchView``: mostly a real one, sometimes a value the enum does not have."""
    real = st.sampled_from([pb.BATCH_VIEW_UNSPECIFIED, pb.BATCH_VIEW_BASIC, pb.BATCH_VIEW_FULL])
    return st.one_of(real, real, real, st.integers(3, 5), int32s())


def unary_requests(known: Known) -> st.SearchStrategy[tuple[str, Any]]:
    """``(rpc, request)`` for every RPC but ``SubmitBatch``, aimed at what ``known`` holds.

    ``DeleteBatch`` names only ``known.deletable`` among the real batches.
    """
    batch = ids(known.batch_ids)
    file = ids(known.file_ids)
    sequence = st.one_of(st.integers(-2, 40), int64s())
    return st.one_of(
        st.tuples(st.just("GetBatch"), st.builds(pb.GetBatchRequest, batch_id=batch, view=views())),
        st.tuples(st.just("ListBatches"), list_requests(known.tokens)),
        st.tuples(
            st.just("ListFiles"),
            st.builds(
                pb.ListFilesRequest,
                batch_id=batch,
                page_size=st.one_of(st.integers(-2, 3), int32s()),
                page_token=st.one_of(st.just(""), st.just(""), texts()),
                states=_file_states(),
            ),
        ),
        st.tuples(
            st.just("WatchBatch"),
            st.builds(
                pb.WatchBatchRequest,
                batch_id=batch,
                after_sequence=sequence,
                follow=st.booleans(),
            ),
        ),
        st.tuples(
            st.just("RetryFiles"),
            st.builds(
                pb.RetryFilesRequest,
                batch_id=batch,
                file_ids=st.lists(file, max_size=3),
                passwords=st.dictionaries(file, texts(), max_size=2),
            ),
        ),
        st.tuples(
            st.just("CancelBatch"),
            st.builds(pb.CancelBatchRequest, batch_id=batch, view=views()),
        ),
        st.tuples(
            st.just("GetFileResult"),
            st.builds(pb.GetFileResultRequest, batch_id=batch, file_id=file),
        ),
        st.tuples(
            st.just("GetFileHistory"),
            st.builds(pb.GetFileHistoryRequest, batch_id=batch, file_id=file),
        ),
        st.tuples(
            st.just("DeleteBatch"),
            st.builds(pb.DeleteBatchRequest, batch_id=ids(known.deletable)),
        ),
    )


# Uploads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadCase:
    """The messages of one ``SubmitBatch`` stream.

    Attributes:
        messages: In the order they are sent.
        spec_valid: Whether the stream's spec, if it has one, is certainly valid.
        cancel_after: The client cancels the call after sending this many messages
            (``None``: it closes the stream after the last one).
        ending: How the upload ends: ``"end"`` (a right ``end``), ``"wrong-count"``,
            ``"no-end"`` or ``"after-end"`` (messages follow a right ``end``).
    """

    messages: tuple[pb.SubmitBatchRequest, ...]
    spec_valid: bool | None
    cancel_after: int | None
    ending: str = "end"


# A few contents shared between examples, so that idempotency keys meet the same files.
CONTENTS = (b"", b"%PDF-1.4 not really", b"x" * 1500, bytes(range(256)) * 8, b"y" * 2049)


def _chunks(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def _file_messages(
    draw: st.DrawFn, max_bytes: int, honest: bool = False
) -> list[pb.SubmitBatchRequest]:
    """A header and its bytes; unless ``honest``, the header may lie about them."""
    if honest:
        data = draw(st.one_of(st.sampled_from(CONTENTS[:3]), st.binary(max_size=256)))
        header = pb.FileHeader(
            name=draw(st.sampled_from(["a.pdf", "b.pdf", "report 2024.pdf", "名前.pdf"])),
            size_bytes=len(data),
            sha256=draw(st.sampled_from(["", sha256_of(data)])),
        )
        return _file_bytes(draw, header, data)
    data = draw(st.one_of(st.sampled_from(CONTENTS), st.binary(max_size=max_bytes)))
    declared = len(data) + draw(
        st.sampled_from([0] * 16 + [1, -1, 1, -1, 5_000, 5_000, 2**62, -(2**40)])
    )
    sha = draw(
        st.sampled_from(
            ["", "", "", sha256_of(data), sha256_of(data), sha256_of(b"other"), "ABC", "g" * 64]
        )
    )
    header = pb.FileHeader(name=draw(file_names()), size_bytes=declared, sha256=sha)
    if draw(st.booleans()):
        header.password = draw(texts())
    return _file_bytes(draw, header, data)


def _file_bytes(draw: st.DrawFn, header: pb.FileHeader, data: bytes) -> list[pb.SubmitBatchRequest]:
    # The bytes in chunks, inside the header (`content`), or both: then any chunk that
    # follows a non-empty content is refused.
    inline = draw(st.sampled_from(["chunks", "chunks", "chunks", "content", "content", "both"]))
    if inline == "content":
        header.content = data
        return [pb.SubmitBatchRequest(file=header)]
    if inline == "both":
        cut = draw(st.integers(0, len(data)))
        header.content, data = data[:cut], data[cut:]
    return [
        pb.SubmitBatchRequest(file=header),
        *(pb.SubmitBatchRequest(chunk=c) for c in _chunks(draw, data)),
    ]


def _end(file_count: int) -> pb.SubmitBatchRequest:
    return pb.SubmitBatchRequest(end=pb.UploadEnd(file_count=file_count))


def _stray_messages(keys: Sequence[str]) -> st.SearchStrategy[pb.SubmitBatchRequest]:
    return st.one_of(
        st.just(pb.SubmitBatchRequest()),
        st.builds(lambda c: pb.SubmitBatchRequest(spec=c.spec), spec_cases(keys)),
        st.builds(lambda b: pb.SubmitBatchRequest(chunk=b), st.binary(max_size=64)),
        st.builds(
            lambda n, size: pb.SubmitBatchRequest(file=pb.FileHeader(name=n, size_bytes=size)),
            file_names(),
            int64s(),
        ),
        st.builds(_end, st.one_of(st.integers(0, 4), int32s())),
    )


def _wrong_counts(right: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([right + 1, right - 1, 0, -1, INT32[1], INT32[0]]), int32s()
    ).filter(lambda count: count != right)


@st.composite
def upload_cases(draw: st.DrawFn, keys: Sequence[str], max_bytes: int) -> UploadCase:
    """Mostly well-formed uploads with lies and stray messages mixed in; some truncated.

    Most end with a right ``end``; some with a wrong ``file_count``, none, or messages
    after it. Some are cancelled: anywhere, and often just before or just after ``end``.
    """
    # An honest upload breaks no rule but maybe its ending's: the ending decides.
    honest = draw(st.sampled_from([True, False, False]))
    case = SpecCase(draw(valid_specs(keys)), True) if honest else draw(spec_cases(keys))
    messages: list[pb.SubmitBatchRequest] = []
    if honest or draw(st.sampled_from([True] * 19 + [False])):
        messages.append(pb.SubmitBatchRequest(spec=case.spec))
    counts = [1, 2, 1, 3] if honest else [1, 2, 1, 3, 0, 2, 4, 1, 3, 5]
    for _ in range(draw(st.sampled_from(counts))):
        messages += draw(_file_messages(max_bytes, honest))
    for _ in range(0 if honest else draw(st.sampled_from([0] * 6 + [1, 2]))):
        messages.insert(draw(st.integers(1, max(1, len(messages)))), draw(_stray_messages(keys)))
    # The count the service will have received: every header sent, stray ones too.
    right = sum(m.WhichOneof("item") == "file" for m in messages)
    ending = draw(
        st.sampled_from(["end"] * 12 + ["wrong-count"] * 2 + ["no-end"] * 2 + ["after-end"])
    )
    if ending == "wrong-count":
        messages.append(_end(draw(_wrong_counts(right))))
    elif ending != "no-end":
        messages.append(_end(right))
    if ending == "after-end":
        messages += draw(st.lists(_stray_messages(keys), min_size=1, max_size=2))
    last = len(messages)
    cut = st.one_of(st.integers(0, last), st.sampled_from([max(0, last - 1), last]))
    cancel_after = draw(st.one_of(st.none(), st.none(), st.none(), st.none(), cut))
    return UploadCase(tuple(messages), case.valid, cancel_after, ending)
