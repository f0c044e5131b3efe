"""Authentication and tenant isolation on every RPC, through real servers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from server.client.auth import BearerToken
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from server.main import main
from server.security.auth import (
    UNAUTHENTICATED_MESSAGE,
    Authenticator,
    ConfigurationError,
    TenantTokens,
    check_token,
    hash_token,
    is_loopback,
)
from server.service.app import Service
from server.service.settings import SecuritySettings, ServerSettings
from tests.helpers.security_fixtures import (
    TOKENS,
    SecureFactory,
    SecureServer,
    settle,
    submit,
    write_tokens_file,
)
from tests.helpers.server_fixtures import WAIT, make_pdf, upload

Stub = batch_pb2_grpc.BatchServiceStub
# Every BatchService RPC, made on one batch (and one of its files).
RPCS: dict[str, Callable[[Stub, str], object]] = {
    "SubmitBatch": lambda s, _: s.SubmitBatch(
        upload(pb.BatchSpec(), [("a.pdf", make_pdf("a"))]), timeout=WAIT
    ),
    "GetBatch": lambda s, b: s.GetBatch(pb.GetBatchRequest(batch_id=b), timeout=WAIT),
    "ListBatches": lambda s, _: s.ListBatches(pb.ListBatchesRequest(), timeout=WAIT),
    "WatchBatch": lambda s, b: list(s.WatchBatch(pb.WatchBatchRequest(batch_id=b), timeout=WAIT)),
    "RetryFiles": lambda s, b: s.RetryFiles(pb.RetryFilesRequest(batch_id=b), timeout=WAIT),
    "CancelBatch": lambda s, b: s.CancelBatch(pb.CancelBatchRequest(batch_id=b), timeout=WAIT),
    "GetFileResult": lambda s, b: list(
        s.GetFileResult(pb.GetFileResultRequest(batch_id=b, file_id="f00001"), timeout=WAIT)
    ),
    "DeleteBatch": lambda s, b: s.DeleteBatch(pb.DeleteBatchRequest(batch_id=b), timeout=WAIT),
    "ExportResults": lambda s, b: list(
        s.ExportResults(pb.ExportResultsRequest(batch_id=b, after_file_id="f00001"), timeout=WAIT)
    ),
}
BATCH_RPCS = [name for name in RPCS if name not in ("SubmitBatch", "ListBatches")]


def _failure(call: Callable[[], object]) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert isinstance(raised.value, grpc.Call)
    return raised.value


def _status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, bytes]:
    """Code, message and every rich detail of a refused call, byte for byte."""
    error = _failure(call)
    status = rpc_status.from_call(error)
    return error.code(), error.details() or "", status.SerializeToString() if status else b""


@pytest.fixture
def acme_batch(secure_serve: SecureFactory) -> tuple[SecureServer, str]:
    server = secure_serve()
    batch = submit(server.stub("acme"), ("a.pdf", make_pdf("secret of acme")))
    settle(server.stub("acme"), batch.batch_id)
    return server, batch.batch_id


@pytest.mark.parametrize("rpc", list(RPCS))
def test_calls_without_a_valid_token_are_refused_alike_and_without_details(
    acme_batch: tuple[SecureServer, str], rpc: str
) -> None:
    server, batch_id = acme_batch
    stubs = {
        "no token": server.stub(),
        "unknown token": server.stub(token="not-anyones-token-0123456789"),
        "hash as token": server.stub(token=hash_token(TOKENS["acme"])),
        "token of one tenant, almost": server.stub(token=TOKENS["acme"][:-1]),
    }
    answers = {name: _status(lambda s=stub: RPCS[rpc](s, batch_id)) for name, stub in stubs.items()}

    assert set(answers.values()) == {
        (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE, b"")
    }
    # The batch is untouched.
    view = server.service.store.load(batch_id)
    assert view is not None
    assert view.batch.state.value == "SUCCEEDED"


@pytest.mark.parametrize("rpc", BATCH_RPCS)
def test_another_tenants_batch_is_answered_for_exactly_as_a_missing_one(
    acme_batch: tuple[SecureServer, str], rpc: str
) -> None:
    server, batch_id = acme_batch
    globex = server.stub("globex")

    foreign = _status(lambda: RPCS[rpc](globex, batch_id))
    missing = _status(lambda: RPCS[rpc](globex, uuid.uuid4().hex))

    assert foreign == missing
    assert foreign[0] is grpc.StatusCode.NOT_FOUND
    # The owner still sees its batch, unchanged and with its result.
    acme = server.stub("acme")
    assert acme.GetBatch(pb.GetBatchRequest(batch_id=batch_id)).state == pb.BATCH_STATE_SUCCEEDED
    chunks = list(acme.GetFileResult(pb.GetFileResultRequest(batch_id=batch_id, file_id="f00001")))
    assert "secret of acme" in chunks[-1].page.text


def test_listing_shows_only_the_callers_batches_and_keys_are_per_tenant(
    secure_serve: SecureFactory,
) -> None:
    server = secure_serve()
    acme, globex = server.stub("acme"), server.stub("globex")
    mine = submit(acme, ("a.pdf", make_pdf("a")), idempotency_key="k1")
    theirs = submit(globex, ("b.pdf", make_pdf("b")), idempotency_key="k1")
    again = submit(acme, ("a.pdf", make_pdf("a")), idempotency_key="k1")

    assert theirs.batch_id != mine.batch_id
    assert again.batch_id == mine.batch_id
    assert [b.batch_id for b in acme.ListBatches(pb.ListBatchesRequest()).batches] == [
        mine.batch_id
    ]
    assert [b.batch_id for b in globex.ListBatches(pb.ListBatchesRequest()).batches] == [
        theirs.batch_id
    ]
    for stub, batch in ((acme, mine), (globex, theirs)):
        settle(stub, batch.batch_id)


def test_health_and_reflection_stay_open_without_a_token(secure_serve: SecureFactory) -> None:
    server = secure_serve()
    channel = server.channel()
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reflected = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([request]), timeout=WAIT
    )
    services = {s.name for s in next(iter(reflected)).list_services_response.service}
    assert "pdfbatch.v1.BatchService" in services


def test_python_client_and_cli_send_the_token(
    secure_serve: SecureFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = secure_serve()
    with server.client("acme") as client:
        batch_id = client.submit([_write(tmp_path / "in" / "a.pdf", make_pdf("a"))]).batch_id
    token_file = _write(tmp_path / "acme.token", TOKENS["acme"].encode() + b"\n")
    address = ["--address", server.address]

    assert main(["status", batch_id, *address, "--token-file", str(token_file)]) in (0, 2, 3)
    monkeypatch.setenv("PDFBATCH_TOKEN", TOKENS["globex"])
    assert main(["status", batch_id, *address]) == 1
    assert "NOT_FOUND (BATCH_NOT_FOUND)" in capsys.readouterr().err
    monkeypatch.delenv("PDFBATCH_TOKEN")
    assert main(["list", *address]) == 1
    assert f"UNAUTHENTICATED: {UNAUTHENTICATED_MESSAGE}" in capsys.readouterr().err
    settle(server.stub("acme"), batch_id)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_hash_token_reads_standard_input_or_makes_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-enough-token\n"))
    assert main(["hash-token"]) == 0
    expected = "sha256:" + hashlib.sha256(b"a-long-enough-token").hexdigest()
    assert capsys.readouterr().out == expected + "\n"

    assert main(["hash-token", "--generate"]) == 0
    token, hashed = capsys.readouterr().out.splitlines()
    assert hashed == hash_token(check_token(token))

    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["hash-token"]) == 1
    assert "at least 16 characters" in capsys.readouterr().err


def test_tokens_files_in_toml_and_json_name_the_same_tenants(tmp_path: Path) -> None:
    toml = TenantTokens.load(write_tokens_file(tmp_path / "t.toml"))
    document = {"tenants": {t: [hash_token(token)] for t, token in TOKENS.items()}}
    (tmp_path / "t.json").write_text(json.dumps(document))
    assert TenantTokens.load(tmp_path / "t.json") == toml
    assert toml.tenants == {"acme", "globex"}


_GOOD = hash_token("x" * 20)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no [tenants] table with tenants in it"),
        ("[tenants]\n", "no [tenants] table with tenants in it"),
        ('[tenants]\n"bad name!" = ["x"]\n', "tenant name 'bad name!' must be 1 to 64"),
        ("[tenants]\nacme = []\n", "tenant 'acme' needs a list of token hashes"),
        ('[tenants]\nacme = ["plain-token-not-hash"]\n', "each token hash must look like"),
        (f'[tenants]\nacme = ["{_GOOD}"]\nglobex = ["{_GOOD}"]\n', "a token hash is listed twice"),
        ("[tenants\n", "cannot read tokens file"),
    ],
)
def test_a_bad_tokens_file_stops_the_service_with_a_clear_error(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match="tokens file") as raised:
        TenantTokens.load(path)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("metadata", "tenant"),
    [
        ((), None),
        ((("authorization", f"Bearer {TOKENS['acme']}"),), "acme"),
        ((("authorization", f"bearer  {TOKENS['globex']} "),), "globex"),
        ((("authorization", f"Basic {TOKENS['acme']}"),), None),
        ((("authorization", "Bearer "),), None),
        ((("authorization", TOKENS["acme"]),), None),
        ((("authorization", f"Bearer {TOKENS['acme']}"),) * 2, None),
        ((("authorization", f"Bearer {TOKENS['acme']}".encode()),), None),
    ],
)
def test_the_authenticator_reads_one_bearer_token(
    tmp_path: Path, metadata: tuple[tuple[str, Any], ...], tenant: str | None
) -> None:
    authenticator = Authenticator(TenantTokens.load(write_tokens_file(tmp_path / "t.toml")))
    assert authenticator.tenant_for(metadata) == tenant
    assert Authenticator(None).tenant_for(metadata) == ""


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1:50051", True),
        ("127.3.2.1:1", True),
        ("[::1]:50051", True),
        ("localhost:0", True),
        ("unix:/run/pdfbatch.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.1.2.3:50051", False),
        ("example.com:50051", False),
    ],
)
def test_loopback_addresses(address: str, local: bool) -> None:
    assert is_loopback(address) is local


def test_without_tokens_the_service_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    settings = ServerSettings(address="0.0.0.0:0", data_dir=tmp_path / "data")
    with pytest.raises(ConfigurationError, match=r"refusing to listen on 0\.0\.0\.0:0"):
        Service(settings)
    assert not (tmp_path / "data").exists(), "nothing was set up before the refusal"

    # In its own process: `serve` configures the process's logging for good.
    serve = [sys.executable, "-m", "server.main", "serve", "--address", "[::]:0"]
    done = subprocess.run(
        [*serve, "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PDFBATCH_")},
    )
    assert done.returncode == 1
    assert "cannot start: refusing to listen on [::]:0" in done.stderr


def test_with_tokens_the_service_may_listen_on_every_interface(
    secure_serve: SecureFactory,
) -> None:
    with structlog.testing.capture_logs() as logs:
        server = secure_serve(address="0.0.0.0:0")
    warned = [e for e in logs if e["event"] == "bearer_tokens_without_tls"]
    assert warned == [
        {"event": "bearer_tokens_without_tls", "address": "0.0.0.0:0", "log_level": "warning"}
    ]
    port = server.address.rpartition(":")[2]
    channel = server.channel(address=f"127.0.0.1:{port}")
    stub = Stub(grpc.intercept_channel(channel, BearerToken(TOKENS["acme"])))
    assert list(stub.ListBatches(pb.ListBatchesRequest(), timeout=WAIT).batches) == []


def test_settings_refuse_half_a_tls_configuration(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TLS needs both tls_cert and tls_key"):
        SecuritySettings(tls_cert=tmp_path / "c.pem")
    with pytest.raises(ValueError, match=r"tls_client_ca \(mutual TLS\) needs tls_cert"):
        SecuritySettings(tls_client_ca=tmp_path / "ca.pem")


def test_another_tenants_probes_never_show_in_the_owners_history(
    acme_batch: tuple[SecureServer, str],
) -> None:
    server, batch_id = acme_batch
    globex = server.stub("globex")
    probe = (("x-request-id", "globex-probe-1"),)
    for call in (
        lambda: globex.GetBatch(pb.GetBatchRequest(batch_id=batch_id), metadata=probe),
        lambda: globex.CancelBatch(pb.CancelBatchRequest(batch_id=batch_id), metadata=probe),
        lambda: globex.RetryFiles(pb.RetryFilesRequest(batch_id=batch_id), metadata=probe),
    ):
        with pytest.raises(grpc.RpcError):
            call()

    history = server.stub("acme").GetFileHistory(
        pb.GetFileHistoryRequest(batch_id=batch_id, file_id="f00001")
    )

    requests = [e.request for e in history.entries if e.HasField("request")]
    assert requests, "the owner's own requests are there"
    assert {r.caller for r in requests} == {"acme"}
    assert "globex-probe-1" not in str(history)


# What holds a batch's files, events, results and requests: never read for another tenant.
_CONTENT_READS = (
    "load",
    "file_page",
    "events_after",
    "load_result",
    "result_summary",
    "result_text",
    "audit_entries",
)


@pytest.mark.parametrize("rpc", [*BATCH_RPCS, "ListFiles", "GetFileHistory"])
def test_another_tenants_batch_is_refused_from_its_record_alone(
    acme_batch: tuple[SecureServer, str], rpc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, batch_id = acme_batch
    store = server.service.store
    reads: list[str] = []
    for name in _CONTENT_READS:
        method = getattr(store, name)

        def spy(*args: object, _name: str = name, _method: Any = method) -> object:
            if batch_id in args:
                reads.append(_name)
            return _method(*args)

        monkeypatch.setattr(store, name, spy)
    calls = {
        **RPCS,
        "ListFiles": lambda s, b: s.ListFiles(pb.ListFilesRequest(batch_id=b), timeout=WAIT),
        "GetFileHistory": lambda s, b: s.GetFileHistory(
            pb.GetFileHistoryRequest(batch_id=b, file_id="f00001"), timeout=WAIT
        ),
    }

    error = _failure(lambda: calls[rpc](server.stub("globex"), batch_id))

    assert error.code() is grpc.StatusCode.NOT_FOUND
    # Refused from the batch's record: what a missing id costs, whatever the batch holds.
    assert reads == []
