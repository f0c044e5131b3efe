"""Servers with tenants, tokens, TLS and a hand-driven clock, for the security tests.

Like :mod:`tests.helpers.server_fixtures`, every server is a real :class:`Service` on loopback
with real worker processes, stopped completely after its test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from server.client.api import Client
from server.client.auth import BearerToken
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from server.security.auth import hash_token
from server.service.app import Service
from server.service.settings import SecuritySettings, ServerSettings, UploadLimits
from tests.helpers.server_fixtures import WAIT, upload

TOKENS = {
    "acme": "acme-token-5f2c1e9a7b3d",
    "globex": "globex-token-8d4a0c6e2f1b",
}


def write_tokens_file(path: Path, tokens: dict[str, str] = TOKENS) -> Path:
    """A TOML tokens file giving each tenant the hash of its token."""
    lines = ["[tenants]"] + [f'{tenant} = ["{hash_token(t)}"]' for tenant, t in tokens.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class ManualClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


@dataclass
class SecureServer:
    """A started service with tenants, and channels to it."""

    service: Service
    data_dir: Path
    _channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return self.service.address

    def channel(
        self, credentials: grpc.ChannelCredentials | None = None, *, address: str | None = None
    ) -> grpc.Channel:
        """A new channel, plaintext or TLS, closed after the test."""
        target = address or self.address
        if credentials is None:
            channel = grpc.insecure_channel(target)
        else:
            channel = grpc.secure_channel(target, credentials)
        self._channels.append(channel)
        return channel

    def stub(
        self, tenant: str | None = None, *, token: str | None = None
    ) -> batch_pb2_grpc.BatchServiceStub:
        """A plaintext stub sending ``tenant``'s token, or ``token``, or none."""
        if tenant is not None:
            token = TOKENS[tenant]
        channel = self.channel()
        if token is not None:
            channel = grpc.intercept_channel(channel, BearerToken(token))
        return batch_pb2_grpc.BatchServiceStub(channel)

    def client(self, tenant: str) -> Client:
        """The Python client, as ``tenant``."""
        return Client(self.address, channel=self.channel(), token=TOKENS[tenant])

    def close(self) -> None:
        """Close every channel and stop the service."""
        for channel in self._channels:
            channel.close()
        self.service.stop(grace=0)


def submit(
    stub: batch_pb2_grpc.BatchServiceStub, *files: tuple[str, bytes], **spec: Any
) -> pb.Batch:
    """Upload ``(name, bytes)`` pairs as one batch."""
    return stub.SubmitBatch(upload(pb.BatchSpec(**spec), files), timeout=WAIT)


def settle(stub: batch_pb2_grpc.BatchServiceStub, batch_id: str) -> pb.Batch:
    """Watch the batch until it settles; return it."""
    list(stub.WatchBatch(pb.WatchBatchRequest(batch_id=batch_id), timeout=WAIT))
    return stub.GetBatch(
        pb.GetBatchRequest(batch_id=batch_id, view=pb.BATCH_VIEW_FULL), timeout=WAIT
    )


SecureFactory = Callable[..., SecureServer]


@pytest.fixture
def secure_serve(tmp_path: Path) -> Iterator[SecureFactory]:
    """Start services; ``tenants=True`` writes :data:`TOKENS` into a tokens file.

    Keywords: ``security`` (a dict for :class:`SecuritySettings`), ``limits`` (a dict for
    :class:`UploadLimits`), ``clock``, and any :class:`ServerSettings` field.
    """
    running: list[SecureServer] = []

    def start(
        *,
        tenants: bool = True,
        security: dict[str, Any] | None = None,
        limits: dict[str, int] | None = None,
        clock: Callable[[], float] | None = None,
        **settings: Any,
    ) -> SecureServer:
        data_dir = settings.pop("data_dir", tmp_path / f"server-{len(running)}")
        data_dir.mkdir(exist_ok=True)
        security = dict(security or {})
        if tenants:
            security.setdefault("tokens_file", write_tokens_file(tmp_path / "tokens.toml"))
        settings.setdefault("address", "127.0.0.1:0")
        settings.setdefault("workers", 2)
        settings.setdefault("memory_limit_bytes", 1 << 30)
        settings.setdefault("shutdown_grace", 0.0)
        service = Service(
            ServerSettings(
                data_dir=data_dir,
                limits=UploadLimits(**(limits or {})),
                security=SecuritySettings(**security),
                **settings,
            ),
            **({"clock": clock} if clock is not None else {}),
        )
        service.start()
        running.append(SecureServer(service, data_dir))
        return running[-1]

    yield start
    for server in running:
        server.close()
