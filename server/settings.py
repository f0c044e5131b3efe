"""Configuration of the service and of the client, from flags and ``PDFBATCH_*`` variables.

Every setting can come from the environment (``PDFBATCH_ADDRESS``, ``PDFBATCH_DATA_DIR``,
``PDFBATCH_WORKERS``...); values given explicitly (the command line's flags) win.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from actors.runtime import MAX_NAME_CHARS

__all__ = ["DEFAULT_ADDRESS", "ClientSettings", "ServerSettings", "UploadLimits"]

DEFAULT_ADDRESS = "127.0.0.1:50051"
_MIB = 1024 * 1024


class UploadLimits(BaseSettings):
    """What one upload may hold.

    Attributes:
        max_file_bytes: Largest file. Default 256 MiB.
        max_batch_bytes: Largest total of one batch. Default 2 GiB.
        max_files_per_batch: Most files in one batch. Default 1,000.
        max_name_chars: Longest file name, at most 255. Default 255.
    """

    model_config = SettingsConfigDict(env_prefix="PDFBATCH_", frozen=True, extra="ignore")

    max_file_bytes: int = Field(default=256 * _MIB, ge=1)
    max_batch_bytes: int = Field(default=2048 * _MIB, ge=1)
    max_files_per_batch: int = Field(default=1_000, ge=1)
    max_name_chars: int = Field(default=MAX_NAME_CHARS, ge=1, le=MAX_NAME_CHARS)


class ServerSettings(BaseSettings):
    """How ``pdfbatch serve`` runs.

    Attributes:
        address: ``host:port`` to listen on; port 0 picks a free one.
            Default ``127.0.0.1:50051``.
        data_dir: Where uploaded bytes are kept. Default ``./data``.
        workers: Worker processes. Default: one per CPU.
        memory_limit_bytes: Address-space cap of each worker. Default 2 GiB.
        limits: Upload limits.
        max_watchers: Concurrent ``WatchBatch`` streams; more are refused with
            ``RESOURCE_EXHAUSTED``. Default 64.
        watch_queue_size: Events buffered per watcher before it falls back to reading
            the store. Default 256.
        max_events_per_batch: Events kept per batch for ``WatchBatch`` resumes.
            Default: all.
        rpc_threads: Threads serving calls; more than ``max_watchers`` so that a full
            house of watchers never starves other calls. Default ``max_watchers + 32``.
        shutdown_grace: Seconds running attempts get to finish on SIGTERM before they
            are stopped. Default 10.
        stop_timeout: Seconds to wait for a batch's attempts to stop. Default 10.
        metrics_port: Serve Prometheus metrics over HTTP on this port, on the host of
            ``address``. Default ``None``: no metrics endpoint.
    """

    model_config = SettingsConfigDict(env_prefix="PDFBATCH_", frozen=True, extra="ignore")

    address: str = DEFAULT_ADDRESS
    data_dir: Path = Path("data")
    workers: int | None = Field(default=None, ge=1, le=256)
    memory_limit_bytes: int | None = Field(default=2048 * _MIB, ge=64 * _MIB)
    limits: UploadLimits = Field(default_factory=UploadLimits)
    max_watchers: int = Field(default=64, ge=1)
    watch_queue_size: int = Field(default=256, ge=1)
    max_events_per_batch: int | None = Field(default=None, ge=0)
    rpc_threads: int | None = Field(default=None, ge=2)
    shutdown_grace: float = Field(default=10.0, ge=0)
    stop_timeout: float = Field(default=10.0, gt=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)

    @model_validator(mode="after")
    def _threads_beyond_watchers(self) -> Self:
        if self.rpc_threads is not None and self.rpc_threads <= self.max_watchers:
            raise ValueError("rpc_threads must be more than max_watchers")
        return self

    @property
    def threads(self) -> int:
        """Threads serving calls."""
        return self.rpc_threads or self.max_watchers + 32


class ClientSettings(BaseSettings):
    """Where the command-line client connects.

    Attributes:
        address: The server's ``host:port``. Default ``127.0.0.1:50051``.
    """

    model_config = SettingsConfigDict(env_prefix="PDFBATCH_", frozen=True, extra="ignore")

    address: str = DEFAULT_ADDRESS
