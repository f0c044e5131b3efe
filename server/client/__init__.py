"""The Python client of the pdfbatch service: a gRPC client of ``protos/`` alone.

The rule of this package: it speaks the wire (the generated code) and nothing else; it
never imports the service or :mod:`actors`, so it works against any pdfbatch server.
"""

from server.client.api import (
    Client,
    FileResult,
    UploadFile,
    collect_files,
    describe_error,
    events_of,
)
from server.client.settings import ClientSettings
from server.client.tls import CredentialsError, channel_credentials

__all__ = [
    "Client",
    "ClientSettings",
    "CredentialsError",
    "FileResult",
    "UploadFile",
    "channel_credentials",
    "collect_files",
    "describe_error",
    "events_of",
]
