"""Passwords of encrypted files: used, and then found nowhere, even after a restart.

A real server (SQLite store, real workers) takes encrypted PDFs with passwords, right
and wrong, at submission and on retries, is restarted, and is asked again. Then every
byte of its data directory, every log record (structlog and standard logging), all
captured output and every answer and refusal it gave are searched for each password.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog

from server.gen.pdfbatch.v1 import batch_pb2 as pb
from tests.helpers.security_fixtures import SecureFactory, settle
from tests.helpers.server_fixtures import WAIT, make_pdf, rich_error

RIGHT = "Correct-Horse-7f3a9c"
WRONG = ("Wrong-Guess-1b5e0d", "Wrong-Guess-2c6f1e", "Wrong-Guess-3d7a2f")
SECRETS = (RIGHT, *WRONG)


def _upload(files: Iterable[tuple[str, bytes, str | None]]) -> Iterator[pb.SubmitBatchRequest]:
    yield pb.SubmitBatchRequest(spec=pb.BatchSpec(display_name="locked"))
    count = 0
    for name, data, password in files:
        header = pb.FileHeader(name=name, size_bytes=len(data))
        if password is not None:
            header.password = password
        yield pb.SubmitBatchRequest(file=header)
        yield pb.SubmitBatchRequest(chunk=data)
        count += 1
    yield pb.SubmitBatchRequest(end=pb.UploadEnd(file_count=count))


class Transcript:
    """Everything the server said back: answers, and refusals in full."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def answer(self, message: Any) -> Any:
        self.texts.append(str(message))
        return message

    def refusal(self, call: Any) -> str:
        with pytest.raises(grpc.RpcError) as raised:
            call()
        error = rich_error(raised.value)
        self.texts.append(repr(error))
        return error.reason


def _retry(batch_id: str, password: str | None) -> pb.RetryFilesRequest:
    passwords = {"f00002": password} if password is not None else {}
    return pb.RetryFilesRequest(batch_id=batch_id, file_ids=["f00002"], passwords=passwords)


def test_passwords_are_never_logged_stored_or_echoed(
    secure_serve: SecureFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    data_dir = tmp_path / "data"
    said = Transcript()
    locked = make_pdf("opened with the right password", password=RIGHT)
    with structlog.testing.capture_logs() as logs:
        server = secure_serve(data_dir=data_dir)
        acme = server.stub("acme")
        batch = said.answer(
            acme.SubmitBatch(
                _upload([("right.pdf", locked, RIGHT), ("guessed.pdf", locked, WRONG[0])]),
                timeout=WAIT,
            )
        )
        done = said.answer(settle(acme, batch.batch_id))
        assert [f.state for f in done.files] == [pb.FILE_STATE_SUCCEEDED, pb.FILE_STATE_FAILED]
        assert done.files[1].error.code == "PDF_WRONG_PASSWORD"
        said.answer(
            list(
                acme.GetFileResult(
                    pb.GetFileResultRequest(batch_id=batch.batch_id, file_id="f00001")
                )
            )
        )
        said.answer(acme.RetryFiles(_retry(batch.batch_id, WRONG[1]), timeout=WAIT))
        assert said.answer(settle(acme, batch.batch_id)).files[1].error.code == "PDF_WRONG_PASSWORD"
        unknown = pb.RetryFilesRequest(
            batch_id=batch.batch_id, file_ids=["f09999"], passwords={"f09999": WRONG[2]}
        )
        assert said.refusal(lambda: acme.RetryFiles(unknown, timeout=WAIT)) == "FILE_NOT_FOUND"

        server.close()
        restarted = secure_serve(data_dir=data_dir)
        acme = restarted.stub("acme")
        # The password held before the restart is gone: the file asks for one again.
        said.answer(acme.RetryFiles(_retry(batch.batch_id, None), timeout=WAIT))
        asked = said.answer(settle(acme, batch.batch_id)).files[1]
        assert (asked.state, asked.error.code) == (pb.FILE_STATE_FAILED, "PDF_ENCRYPTED")
        assert "password" in asked.error.message
        said.answer(acme.RetryFiles(_retry(batch.batch_id, WRONG[2]), timeout=WAIT))
        said.answer(settle(acme, batch.batch_id))
        capped = said.refusal(lambda: acme.RetryFiles(_retry(batch.batch_id, RIGHT), timeout=WAIT))
        assert capped == "PASSWORD_ATTEMPTS_EXHAUSTED"
        restarted.close()

    stored = [p for p in data_dir.rglob("*") if p.is_file()]
    assert stored, "nothing was stored: the search would prove nothing"
    out, err = capfd.readouterr()
    logged = [repr(entry) for entry in logs]
    assert logged, "structlog captured nothing: the search would prove nothing"
    for secret in SECRETS:
        for encoded in (secret.encode(), secret.encode("utf-16-le")):
            found = [str(p) for p in stored if encoded in p.read_bytes()]
            assert found == [], f"{secret!r} is stored in {found}"
        assert not [entry for entry in logged if secret in entry], secret
        assert secret not in caplog.text
        assert secret not in out
        assert secret not in err
        assert not [text for text in said.texts if secret in text], secret


def test_a_password_is_dropped_once_its_file_has_ended(secure_serve: SecureFactory) -> None:
    server = secure_serve()
    acme = server.stub("acme")
    vault = server.service.runtime._passwords
    locked = make_pdf("locked text", password=RIGHT)
    files = [("open.pdf", make_pdf("open"), RIGHT), ("locked.pdf", locked, WRONG[0])]
    batch = acme.SubmitBatch(_upload(files), timeout=WAIT)
    settled = settle(acme, batch.batch_id)
    assert [f.state for f in settled.files] == [pb.FILE_STATE_SUCCEEDED, pb.FILE_STATE_FAILED]
    # Neither file runs again unless retried: neither password is held any more.
    assert len(vault) == 0

    # A retry without the password is not tried with the wrong one it was once given.
    acme.RetryFiles(_retry(batch.batch_id, None), timeout=WAIT)
    error = settle(acme, batch.batch_id).files[1].error
    assert error.code == "PDF_ENCRYPTED"
    assert "no longer held" in error.message
    # One given with a retry is used, then dropped in turn.
    acme.RetryFiles(_retry(batch.batch_id, RIGHT), timeout=WAIT)
    assert settle(acme, batch.batch_id).files[1].state == pb.FILE_STATE_SUCCEEDED
    assert len(vault) == 0
