"""Where a client connects, and how it proves who it is, from flags and ``PDFBATCH_*``."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_ADDRESS", "ClientSettings"]

DEFAULT_ADDRESS = "127.0.0.1:50051"


class ClientSettings(BaseSettings):
    """Where the command-line client connects, and how it proves who it is.

    Attributes:
        address: The server's ``host:port``. Default ``127.0.0.1:50051``.
        token: The bearer token (``PDFBATCH_TOKEN``). Default none.
        token_file: A file whose first line is the token; wins over ``token``.
        tls: Connect with TLS, trusting the system's CAs unless ``tls_ca`` is given.
            Implied by any of the three files below. Default ``False``.
        tls_ca: PEM CA certificates to trust the server by.
        tls_client_cert: The client's PEM certificate chain, for mutual TLS.
        tls_client_key: PEM private key of ``tls_client_cert``.
    """

    model_config = SettingsConfigDict(env_prefix="PDFBATCH_", frozen=True, extra="ignore")

    address: str = DEFAULT_ADDRESS
    token: SecretStr | None = None
    token_file: Path | None = None
    tls: bool = False
    tls_ca: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None

    @property
    def uses_tls(self) -> bool:
        """Whether to connect with TLS."""
        files = (self.tls_ca, self.tls_client_cert, self.tls_client_key)
        return self.tls or any(path is not None for path in files)
