"""TLS and mutual TLS with certificates the tests make, through real servers."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from server.client.api import Client
from server.client.auth import BearerToken
from server.client.tls import CredentialsError, channel_credentials
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from server.main import main
from server.security.auth import ConfigurationError
from server.security.tls import server_credentials
from tests.helpers.certs import Authority, Pem
from tests.helpers.security_fixtures import TOKENS, SecureFactory, SecureServer
from tests.helpers.server_fixtures import make_pdf

# Handshakes that fail do so at once; this only bounds a test that would hang.
SHORT = 10.0


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Pem]:
    ca = Authority(tmp_path / "pki")
    rogue = Authority(tmp_path / "rogue", name="rogue-ca")
    return {
        "ca": ca.pem,
        "server": ca.issue("server", server=True),
        "client": ca.issue("client", server=False),
        "rogue-client": rogue.issue("rogue-client", server=False),
        "rogue-ca": rogue.pem,
    }


def _list(server: SecureServer, credentials: grpc.ChannelCredentials | None) -> None:
    channel = server.channel(credentials)
    stub = batch_pb2_grpc.BatchServiceStub(
        grpc.intercept_channel(channel, BearerToken(TOKENS["acme"]))
    )
    stub.ListBatches(pb.ListBatchesRequest(), timeout=SHORT)


def _handshake_fails(server: SecureServer, credentials: grpc.ChannelCredentials | None) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _list(server, credentials)
    assert isinstance(raised.value, grpc.Call)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE


def test_tls_serves_clients_that_trust_its_ca_and_nobody_in_plaintext(
    secure_serve: SecureFactory, pki: dict[str, Pem]
) -> None:
    server = secure_serve(security={"tls_cert": pki["server"].cert, "tls_key": pki["server"].key})

    _list(server, channel_credentials(pki["ca"].cert))
    _handshake_fails(server, None)
    _handshake_fails(server, channel_credentials(pki["rogue-ca"].cert))


def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(
    secure_serve: SecureFactory, pki: dict[str, Pem]
) -> None:
    server = secure_serve(
        security={
            "tls_cert": pki["server"].cert,
            "tls_key": pki["server"].key,
            "tls_client_ca": pki["ca"].cert,
        }
    )
    ca = pki["ca"].cert

    _list(server, channel_credentials(ca, pki["client"].cert, pki["client"].key))
    _handshake_fails(server, channel_credentials(ca))
    _handshake_fails(
        server, channel_credentials(ca, pki["rogue-client"].cert, pki["rogue-client"].key)
    )
    _handshake_fails(server, None)


def test_a_client_certificate_does_not_replace_the_token(
    secure_serve: SecureFactory, pki: dict[str, Pem]
) -> None:
    server = secure_serve(
        security={
            "tls_cert": pki["server"].cert,
            "tls_key": pki["server"].key,
            "tls_client_ca": pki["ca"].cert,
        }
    )
    credentials = channel_credentials(pki["ca"].cert, pki["client"].cert, pki["client"].key)
    stub = batch_pb2_grpc.BatchServiceStub(server.channel(credentials))
    with pytest.raises(grpc.RpcError) as raised:
        stub.ListBatches(pb.ListBatchesRequest(), timeout=SHORT)
    assert isinstance(raised.value, grpc.Call)
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_python_client_and_cli_connect_over_mutual_tls(
    secure_serve: SecureFactory,
    pki: dict[str, Pem],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = secure_serve(
        security={
            "tls_cert": pki["server"].cert,
            "tls_key": pki["server"].key,
            "tls_client_ca": pki["ca"].cert,
        }
    )
    credentials = channel_credentials(pki["ca"].cert, pki["client"].cert, pki["client"].key)
    pdf = tmp_path / "in" / "tls.pdf"
    pdf.parent.mkdir()
    pdf.write_bytes(make_pdf("over tls"))
    with Client(server.address, token=TOKENS["acme"], credentials=credentials) as client:
        batch_id = client.submit([pdf]).batch_id
        list(client.watch(batch_id))
    token_file = tmp_path / "token"
    token_file.write_text(TOKENS["acme"])
    tls = [
        "--tls-ca",
        str(pki["ca"].cert),
        "--tls-client-cert",
        str(pki["client"].cert),
        "--tls-client-key",
        str(pki["client"].key),
    ]
    common = ["--address", server.address, "--token-file", str(token_file)]
    capsys.readouterr()

    assert main(["results", batch_id, *common, *tls]) == 0
    assert "over tls" in capsys.readouterr().out
    assert main(["list", *common, "--tls-ca", str(pki["ca"].cert)]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_tls_files_that_cannot_be_used_are_refused_clearly(
    tmp_path: Path, pki: dict[str, Pem]
) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigurationError, match="cannot read the TLS key"):
        server_credentials(pki["server"].cert, missing, None)
    with pytest.raises(ConfigurationError, match="TLS needs both --tls-cert and --tls-key"):
        server_credentials(pki["server"].cert, None, None)
    with pytest.raises(ConfigurationError, match="a client CA"):
        server_credentials(None, None, pki["ca"].cert)
    with pytest.raises(CredentialsError, match="needs its key"):
        channel_credentials(pki["ca"].cert, pki["client"].cert, None)
    assert server_credentials(None, None, None) is None
