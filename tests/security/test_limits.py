"""Abuse limits: rate limits, tenant quotas and retry caps, with their codes and reasons."""

from __future__ import annotations

import grpc
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from actors.policy.catalogue import ErrorCode
from actors.policy.rules import MAX_WRONG_PASSWORDS, password_guesses_exhausted
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.security.ratelimit import TokenBucket
from tests.helpers import hostile_pdfs
from tests.helpers.security_fixtures import ManualClock, SecureFactory, settle, submit
from tests.helpers.server_fixtures import WAIT, make_pdf, refused, wait_until_running

PDF = make_pdf("small")


def test_a_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    bucket = TokenBucket.full(rate=0.5, burst=2, now=0.0)
    bucket, first = bucket.take(0.0)
    bucket, second = bucket.take(0.0)
    bucket, refused_wait = bucket.take(0.5)

    assert (first, second) == (0.0, 0.0)
    assert refused_wait == pytest.approx(1.5)
    assert bucket.take(1.999)[1] == pytest.approx(0.001)
    bucket, later = bucket.take(2.0)
    assert later == 0.0
    assert bucket.tokens == pytest.approx(0.0)


@given(
    rate=st.floats(0.01, 100),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 10), min_size=1, max_size=200),
)
def test_a_bucket_never_grants_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket.full(rate, burst, now=0.0)
    now = 0.0
    granted = 0
    for gap in gaps:
        now += gap
        bucket, wait = bucket.take(now)
        if wait == 0.0:
            granted += 1
        else:
            # Told to wait exactly until a token is there: then it gets one.
            assert bucket.take(now + wait)[1] == pytest.approx(0.0, abs=1e-6)
    assert granted <= burst + rate * now + 1e-6


def test_bucket_values_are_validated() -> None:
    with pytest.raises(ValueError, match="rate must be positive, got 0"):
        TokenBucket.full(0, 1, 0.0)
    with pytest.raises(ValueError, match="burst must be at least 1, got 0"):
        TokenBucket.full(1, 0, 0.0)
    with pytest.raises(ValueError, match=r"tokens must be within \[0, 2\], got 3"):
        TokenBucket(1, 2, 3, 0.0)


def test_submissions_past_the_rate_are_refused_per_tenant_with_retry_info(
    secure_serve: SecureFactory,
) -> None:
    clock = ManualClock()
    server = secure_serve(
        security={"submissions_per_second": 0.5, "submission_burst": 2}, clock=clock
    )
    acme, globex = server.stub("acme"), server.stub("globex")
    batches = [submit(acme, ("a.pdf", PDF)), submit(acme, ("b.pdf", PDF))]
    stored = sorted(server.data_dir.joinpath("blobs").rglob("*"))

    error = refused(lambda: submit(acme, ("c.pdf", make_pdf("not stored"))))

    assert (error.code, error.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SUBMISSION_RATE_EXCEEDED",
    )
    assert error.retry_delay == 2.0
    assert error.metadata == {"ratePerSecond": "0.5", "burst": "2"}
    assert sorted(server.data_dir.joinpath("blobs").rglob("*")) == stored
    batches.append(submit(globex, ("g.pdf", PDF)))  # another tenant has its own bucket
    clock.advance(1.5)
    assert refused(lambda: submit(acme, ("c.pdf", PDF))).retry_delay == 0.5
    clock.advance(0.5)
    batches.append(submit(acme, ("c.pdf", PDF)))
    for batch in batches:
        settle(acme if batch.files[0].name != "g.pdf" else globex, batch.batch_id)


def test_retries_past_the_rate_are_refused_before_the_batch_is_looked_up(
    secure_serve: SecureFactory,
) -> None:
    clock = ManualClock()
    server = secure_serve(security={"retries_per_second": 0.1, "retry_burst": 1}, clock=clock)
    acme = server.stub("acme")
    batch = submit(acme, ("junk.pdf", b"not a pdf"))
    settle(acme, batch.batch_id)
    retry = pb.RetryFilesRequest(batch_id=batch.batch_id)
    acme.RetryFiles(retry, timeout=WAIT)
    settle(acme, batch.batch_id)

    again = refused(lambda: acme.RetryFiles(retry, timeout=WAIT))
    missing = refused(lambda: acme.RetryFiles(pb.RetryFilesRequest(batch_id="x"), timeout=WAIT))

    assert (again.code, again.reason, again.retry_delay) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RETRY_RATE_EXCEEDED",
        10.0,
    )
    assert missing == again


def test_a_tenant_may_have_only_so_many_batches_in_progress(
    secure_serve: SecureFactory,
) -> None:
    server = secure_serve(security={"max_active_batches": 1})
    acme, globex = server.stub("acme"), server.stub("globex")
    busy = submit(acme, ("busy.pdf", hostile_pdfs.cpu_bomb()), idempotency_key="busy")
    wait_until_running(acme, busy.batch_id)
    stored = sorted(server.data_dir.joinpath("blobs").rglob("*"))

    error = refused(lambda: submit(acme, ("next.pdf", make_pdf("next"))))

    assert (error.code, error.reason, error.retry_delay) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_ACTIVE_BATCHES",
        10.0,
    )
    assert error.metadata == {"maxActiveBatches": "1"}
    assert sorted(server.data_dir.joinpath("blobs").rglob("*")) == stored
    # Repeating the submission that made the batch is no new batch: it is answered.
    again = submit(acme, ("busy.pdf", hostile_pdfs.cpu_bomb()), idempotency_key="busy")
    assert again.batch_id == busy.batch_id
    other = submit(globex, ("theirs.pdf", PDF))
    acme.CancelBatch(pb.CancelBatchRequest(batch_id=busy.batch_id), timeout=WAIT)
    settle(acme, submit(acme, ("next.pdf", PDF)).batch_id)
    settle(globex, other.batch_id)


def test_a_tenant_may_store_only_so_many_bytes(secure_serve: SecureFactory) -> None:
    server = secure_serve(security={"max_stored_bytes": 2 * len(PDF) + 10})
    acme, globex = server.stub("acme"), server.stub("globex")
    first = submit(acme, ("a.pdf", PDF), ("b.pdf", PDF))
    settle(acme, first.batch_id)
    stored = sorted(server.data_dir.joinpath("blobs").rglob("*"))

    error = refused(lambda: submit(acme, ("c.pdf", make_pdf("too much"))))

    assert (error.code, error.reason, error.retry_delay) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TENANT_STORAGE_FULL",
        None,
    )
    assert sorted(server.data_dir.joinpath("blobs").rglob("*")) == stored
    settle(globex, submit(globex, ("g.pdf", PDF)).batch_id)
    acme.DeleteBatch(pb.DeleteBatchRequest(batch_id=first.batch_id), timeout=WAIT)
    settle(acme, submit(acme, ("c.pdf", PDF)).batch_id)


def test_manual_retries_of_a_file_are_capped(secure_serve: SecureFactory) -> None:
    server = secure_serve()
    acme = server.stub("acme")
    batch = submit(acme, ("junk.pdf", b"junk"), policy=pb.BatchPolicy(max_manual_retries=1))
    settle(acme, batch.batch_id)
    retry = pb.RetryFilesRequest(batch_id=batch.batch_id, file_ids=["f00001"])
    acme.RetryFiles(retry, timeout=WAIT)
    settle(acme, batch.batch_id)

    error = refused(lambda: acme.RetryFiles(retry, timeout=WAIT))

    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "MANUAL_RETRY_LIMIT",
    )
    assert error.metadata == {"fileId": "f00001"}


def test_wrong_passwords_are_capped_so_retries_cannot_guess_them(
    secure_serve: SecureFactory,
) -> None:
    server = secure_serve()
    acme = server.stub("acme")
    locked = make_pdf("locked", password="the-right-one")
    batch = submit(acme, ("locked.pdf", locked))
    settle(acme, batch.batch_id)
    codes = [
        acme.GetBatch(pb.GetBatchRequest(batch_id=batch.batch_id, view=pb.BATCH_VIEW_FULL))
        .files[0]
        .error.code
    ]
    for guess in ("guess-1", "guess-2", "guess-3"):
        acme.RetryFiles(
            pb.RetryFilesRequest(
                batch_id=batch.batch_id, file_ids=["f00001"], passwords={"f00001": guess}
            ),
            timeout=WAIT,
        )
        codes.append(settle(acme, batch.batch_id).files[0].error.code)

    right = pb.RetryFilesRequest(
        batch_id=batch.batch_id, file_ids=["f00001"], passwords={"f00001": "the-right-one"}
    )
    error = refused(lambda: acme.RetryFiles(right, timeout=WAIT))
    every = refused(lambda: acme.RetryFiles(pb.RetryFilesRequest(batch_id=batch.batch_id)))

    assert codes == [
        "PDF_ENCRYPTED",
        "PDF_WRONG_PASSWORD",
        "PDF_WRONG_PASSWORD",
        "PDF_WRONG_PASSWORD",
    ]
    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PASSWORD_ATTEMPTS_EXHAUSTED",
        {"fileId": "f00001"},
    )
    assert "wrong password 3 times" in error.message
    assert "the-right-one" not in error.message
    assert (every.code, every.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOTHING_TO_RETRY")


def test_password_guesses_run_out_at_the_third_wrong_password() -> None:
    wrong, other = ErrorCode.PDF_WRONG_PASSWORD, ErrorCode.PDF_ENCRYPTED
    assert MAX_WRONG_PASSWORDS == 3
    assert not password_guesses_exhausted([other, wrong, None, wrong, other])
    assert password_guesses_exhausted([wrong, other, wrong, None, wrong])


def test_a_peer_guessing_tokens_is_slowed_and_right_tokens_never_are(
    secure_serve: SecureFactory,
) -> None:
    clock = ManualClock()
    server = secure_serve(
        security={"auth_failures_per_second": 0.5, "auth_failure_burst": 3}, clock=clock
    )
    guesser = server.stub(token="not-a-token-of-anyone-here")
    request = pb.GetBatchRequest(batch_id="b")

    def plain_code() -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as raised:
            guesser.GetBatch(request)
        return raised.value.code()  # type: ignore[attr-defined,no-any-return]

    with structlog.testing.capture_logs() as logs:
        first = [plain_code() for _ in range(3)]
        throttled = [refused(lambda: guesser.GetBatch(request)) for _ in range(5)]

    assert set(first) == {grpc.StatusCode.UNAUTHENTICATED}
    assert {(e.code, e.reason) for e in throttled} == {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "AUTHENTICATION_RATE_EXCEEDED")
    }
    assert throttled[0].retry_delay == 2.0
    assert sum(entry["event"] == "call_unauthenticated" for entry in logs) == 3
    # The right token from the same address is never slowed.
    acme = server.stub("acme")
    assert refused(lambda: acme.GetBatch(request)).code == grpc.StatusCode.NOT_FOUND
    clock.advance(2.0)
    assert plain_code() == grpc.StatusCode.UNAUTHENTICATED
