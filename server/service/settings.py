"""Configuration of the service, from flags and ``PDFBATCH_*`` variables.

Every setting can come from the environment (``PDFBATCH_ADDRESS``, ``PDFBATCH_DATA_DIR``,
``PDFBATCH_WORKERS``...); values given explicitly (the command line's flags) win.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

import grpc
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from actors.orchestration.runtime import MAX_NAME_CHARS
from actors.policy.results import (
    DEFAULT_MAX_ATTACHMENTS,
    DEFAULT_MAX_METADATA_FIELD_BYTES,
    DEFAULT_MAX_NAME_BYTES,
    DEFAULT_MAX_OUTLINE_ENTRIES,
    DEFAULT_MAX_PAGE_DETAILS,
    DEFAULT_MAX_TEXT_BYTES,
    ResultLimits,
)
from actors.storage.retention import RetentionPolicy
from server.security.pacing import UploadPace
from server.wire.errors import FieldViolation, WireError

__all__ = [
    "DEFAULT_ADDRESS",
    "SecuritySettings",
    "ServerSettings",
    "UploadLimits",
]

DEFAULT_ADDRESS = "127.0.0.1:50051"
_MIB = 1024 * 1024
_DAY = 86_400.0
# What one result metadata message may take: gRPC refuses messages over 4 MiB.
_MAX_METADATA_MESSAGE_BYTES = 4 * _MIB - 64 * 1024


class UploadLimits(BaseSettings):
    """What one upload may hold.

    Attributes:
        max_file_bytes: Largest file. Default 256 MiB.
        max_batch_bytes: Largest total of one batch. Default 2 GiB.
        max_files_per_batch: Most files in one batch. Default 100,000: the service keeps
            a batch's counts and working set in memory, not its files, so a bigger batch
            costs store space, not memory.
        max_name_chars: Longest file name, at most 255. Default 255.
        max_password_bytes: Longest password of a file, in bytes of UTF-8, at submit and
            at retry. Default 1,024: a real PDF password is far shorter, and passwords
            stay in memory until their file ends.
        upload_idle_timeout_seconds: Longest pause of an upload between two messages
            (before the first included); a longer one ends it with
            ``DEADLINE_EXCEEDED`` ``UPLOAD_IDLE_TIMEOUT`` and stores nothing of it.
            Default 30: a client that sends keeps sending, and a stalled one holds a
            thread of the service. A message counts once it arrived whole, so a link
            must carry one message in that time (the Python client's 1 MiB chunks need
            35 KB/s).
        max_upload_seconds: Longest time one upload may take to arrive whole; a longer
            one ends with ``DEADLINE_EXCEEDED`` ``UPLOAD_TOO_SLOW``. Default 3,600: the
            largest batch (2 GiB) arrives within it at 600 KB/s.
    """

    model_config = SettingsConfigDict(env_prefix="PDFBATCH_", frozen=True, extra="ignore")

    max_file_bytes: int = Field(default=256 * _MIB, ge=1)
    max_batch_bytes: int = Field(default=2048 * _MIB, ge=1)
    max_files_per_batch: int = Field(default=100_000, ge=1)
    max_name_chars: int = Field(default=MAX_NAME_CHARS, ge=1, le=MAX_NAME_CHARS)
    max_password_bytes: int = Field(default=1024, ge=1)
    upload_idle_timeout_seconds: float = Field(default=30.0, gt=0)
    max_upload_seconds: float = Field(default=3600.0, gt=0)

    @property
    def pace(self) -> UploadPace:
        """How slow an upload may be."""
        return UploadPace(self.upload_idle_timeout_seconds, self.max_upload_seconds)

    def check_password(self, password: str, field_path: str) -> None:
        """Refuse a password over ``max_password_bytes``.

        Raises:
            WireError: ``INVALID_ARGUMENT``, ``PASSWORD_TOO_LONG``.
        """
        if len(password.encode("utf-8", "surrogatepass")) > self.max_password_bytes:
            message = (
                f"A password may have at most {self.max_password_bytes} bytes; "
                "check that the right value was sent."
            )
            raise WireError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "PASSWORD_TOO_LONG",
                message,
                violations=[FieldViolation(field_path, message)],
                metadata={"maxPasswordBytes": str(self.max_password_bytes)},
            )


class SecuritySettings(BaseSettings):
    """Who may call the service, over what, and how much each tenant may ask of it.

    Attributes:
        tokens_file: TOML or JSON file of each tenant's token hashes (see
            :mod:`server.security.auth`). Default ``None``: one anonymous tenant, and the
            service listens on loopback only.
        tls_cert: PEM certificate chain to serve TLS with. Default ``None``: plaintext.
        tls_key: PEM private key of ``tls_cert``.
        tls_client_ca: PEM CA certificates that sign clients' certificates; given,
            every client must present one (mutual TLS). Default ``None``.
        submissions_per_second: Submissions a tenant may make per second in the long
            run. Default 2.
        submission_burst: Submissions a tenant may make at once. Default 50.
        retries_per_second: ``RetryFiles`` calls a tenant may make per second in the
            long run. Default 2.
        retry_burst: ``RetryFiles`` calls a tenant may make at once. Default 50.
        auth_failures_per_second: Failed authentications a peer (an address) may have
            per second in the long run; more are refused with ``RESOURCE_EXHAUSTED``
            and not logged. Default 1.
        auth_failure_burst: Failed authentications a peer may have at once. Default 20.
        max_open_streams: Health watches and reflection streams (open to anyone, a
            thread each) allowed at once in all; more are refused with
            ``RESOURCE_EXHAUSTED``. Default 8.
        max_active_batches: Batches in progress per tenant. Default 100.
        max_stored_bytes: Bytes of uploaded files held per tenant. Default 50 GiB.
    """

    model_config = SettingsConfigDict(env_prefix="PDFBATCH_", frozen=True, extra="ignore")

    tokens_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    submissions_per_second: float = Field(default=2.0, gt=0)
    submission_burst: int = Field(default=50, ge=1)
    retries_per_second: float = Field(default=2.0, gt=0)
    retry_burst: int = Field(default=50, ge=1)
    auth_failures_per_second: float = Field(default=1.0, gt=0)
    auth_failure_burst: int = Field(default=20, ge=1)
    max_open_streams: int = Field(default=8, ge=1)
    max_active_batches: int = Field(default=100, ge=1)
    max_stored_bytes: int = Field(default=50 * 1024 * _MIB, ge=1)

    @model_validator(mode="after")
    def _tls_files_in_pairs(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        return self


class ServerSettings(BaseSettings):
    """How ``pdfbatch serve`` runs.

    Attributes:
        address: ``host:port`` to listen on; port 0 picks a free one.
            Default ``127.0.0.1:50051``.
        data_dir: Where uploaded bytes and the batch database
            (``pdfbatch.sqlite3``) are kept. Default ``./data``.
        workers: Worker processes. Default: one per CPU.
        memory_limit_bytes: Address-space cap of each worker. Default 2 GiB.
        cpu_limit_seconds: CPU time one attempt may use; past it the worker is killed
            and the file fails with ``PDF_LIMIT_EXCEEDED``, without automatic retries.
            Default 240, below the default file timeout, so that a file that loops
            forever costs one attempt. ``None`` for no limit.
        open_files_limit: File descriptors each worker may hold. Default 64.
        worker_niceness: How much lower than the service's the local workers' CPU
            priority is (``nice``), 0 to 19. With the workers keeping every CPU busy,
            the service's threads then run as soon as they wake: watch events arrive
            in about half the time (docs/performance.md), for about 0.04 ms more of the
            service's CPU per one-page file (it batches less of its work). Default 19.
            Set 0 on a host where other CPU-bound programs, outside the service's
            container or cgroup, compete with the workers: at 19 they would get little
            of the CPU then. Ray's workers are Ray's own.
        server_cpus: How many CPUs the server's own threads run on (uploads,
            supervisors, commits, the watch), the highest-numbered of those it may use
            at its start, while at most ``server_cpus_max_watches`` watches are open.
            CPython runs one of its threads at a time, and they hand over to one
            another faster on one CPU than across several: about 15% less of the
            server's CPU a one-page file (docs/performance.md). The local workers run
            on every CPU regardless; Ray's are started before. Default 1; 0 leaves the
            threads on every CPU. Give it more where much of the server's work runs
            outside the interpreter (TLS on many connections, hashing large uploads):
            that part runs in parallel. Only ``pdfbatch serve`` pins: a
            :class:`~server.service.app.Service` made in another program leaves that
            program's threads alone.
        server_cpus_max_watches: The most open watches with the server's threads
            kept on ``server_cpus`` CPUs. With more, sending their events is most of
            the server's work, and it runs outside the interpreter: the threads run on
            every CPU until the open watches are back to half of this (with 50 watches
            open, a p99 of 17 ms from an event to its arrival that way, the median of
            20 runs, against 25 ms on one CPU: docs/performance.md). Default 8; 0: kept
            on ``server_cpus`` CPUs however many watch.
        max_result_text_bytes: Text one file's result may hold, all pages together, in
            bytes of UTF-8. Default 64 MiB; a file with more fails with
            ``PDF_LIMIT_EXCEEDED`` (a cut text would pass for a whole one).
        max_metadata_field_bytes: One field of a result's document information, in
            bytes of UTF-8. Default 64 KiB; a longer field is cut, with a warning.
        max_outline_entries: Outline entries a result keeps, nested ones included.
            Default 1,000; the rest are left out, with a ``PART_TRUNCATED`` warning.
        max_attachments: Attachments a result lists. Default 1,000; the rest are left
            out, with a warning.
        max_result_name_bytes: One outline title or attachment name, in bytes of
            UTF-8. Default 1 KiB; a longer one is cut, with a warning.
        max_page_details: Pages whose size, rotation and character count a result
            keeps. Default 100,000 (above what the workers' page-tree limit lets
            through); every page's text is kept regardless.
        limits: Upload limits.
        security: Authentication, TLS and per-tenant limits.
        max_watchers: Concurrent ``WatchBatch`` streams; more are refused with
            ``RESOURCE_EXHAUSTED`` ``TOO_MANY_WATCHERS``. Default 64.
        max_watchers_per_tenant: Concurrent ``WatchBatch`` streams of one tenant; more
            are refused with ``RESOURCE_EXHAUSTED`` ``TOO_MANY_TENANT_WATCHERS``.
            Default: a quarter of ``max_watchers`` when tenants are configured (no
            tenant can take every watch); none for the one anonymous tenant of a
            service without tokens.
        max_uploads: Concurrent ``SubmitBatch`` uploads; more are refused with
            ``RESOURCE_EXHAUSTED`` ``TOO_MANY_UPLOADS``. Default 32.
        max_uploads_per_tenant: Concurrent uploads of one tenant; more are refused with
            ``RESOURCE_EXHAUSTED`` ``TOO_MANY_TENANT_UPLOADS``. Default: a quarter of
            ``max_uploads`` when tenants are configured; none without tokens.
        watch_queue_size: Events a watched batch keeps for its watchers; a watcher
            further behind falls back to reading the store. Default 4,096: the events
            are kept once for every watcher of the batch, and forgotten once all have
            taken them, while a fallback costs reading and converting every missed
            event again for that watcher.
        watch_max_events_per_message: Most events one ``WatchBatch`` message carries,
            whatever the watch asks for (``max_events_per_message``). Default 256: a
            watch that is behind catches up in few messages, each well below gRPC's
            message limit.
        watch_max_message_bytes: A ``WatchBatch`` message ends before its events
            would exceed this many bytes; a larger single event goes alone. Default
            1 MiB.
        inline_blob_max_bytes: Uploaded files of at most this many bytes are stored as
            rows of a SQLite file (``blobs/inline.sqlite``) rather than a file each.
            Default 256 KiB: a file creation costs more than a small file's whole
            upload. 0 stores every upload as a file.
        max_events_per_batch: Events kept per batch for ``WatchBatch`` resumes.
            Default 100,000; ``None`` keeps all.
        event_retention_seconds: Age past which events are forgotten. Default 7 days;
            ``None`` keeps them as long as their batch.
        bytes_retention_seconds: How long an ended batch keeps its uploaded bytes, so
            that its files can be retried. Default 7 days.
        records_retention_seconds: How long an ended batch's records and results are
            kept. Default ``None``: until ``DeleteBatch``.
        retention_sweep_seconds: Seconds between two retention sweeps. Default 3600.
        processor: Import path of what workers run on each file. Default the PDF
            extractor; only tests set it (``PDFBATCH_PROCESSOR``), to script workers.
        full_view_files: Files in the first page of a ``BATCH_VIEW_FULL`` reply
            (``GetBatch``, ``SubmitBatch``, ``RetryFiles``, ``CancelBatch``), 1 to
            1,000; the rest is read with ``ListFiles`` from its ``next_page_token``.
            Default 100: a full reply stays far below gRPC's 4 MiB message limit
            whatever the batch's size.
        rpc_threads: Threads running the calls' handlers; more than ``max_uploads +
            max_exports + max_open_streams`` (the calls that hold a thread for long), so
            that a full house of them never starves other calls. Default that sum + 32.
            Watches hold none: they are sent from the server's event loop.
        max_concurrent_rpcs: Calls the server takes at once, watches included, running
            or waiting for a thread; more are refused with ``RESOURCE_EXHAUSTED`` at once
            instead of queueing without end. Default twice the threads plus
            ``max_watchers``.
        shutdown_grace: Seconds running attempts get to finish on SIGTERM before they
            are stopped. Default 10.
        stop_timeout: Seconds to wait for a batch's attempts to stop. Default 10.
        commit_interval_seconds: Seconds a batch's group commit waits after the one
            before when no other report is queued, so that reports arriving one at a
            time are stored together: fewer commits (each about 0.2 ms of the server's
            CPU) and fewer watch messages, for events held back that long at most.
            Default 0.005; 0 commits after every report that finds the inbox empty.
        show_running_after_seconds: Seconds a worker has run an attempt before its
            file is stored, and shown to watchers, as ``RUNNING``. An attempt that ends
            sooner is stored by its end alone (one change, one event from ``PENDING``,
            its record holding when the worker started it), so that a batch of files
            that take a few tens of milliseconds costs one commit a file, not two.
            Default 0.1, at most 60; 0 stores a start at the next group commit.
        metrics_port: Serve Prometheus metrics over HTTP on this port. Default ``None``:
            no metrics endpoint.
        metrics_address: The host the metrics endpoint listens on. Default
            ``127.0.0.1``: it has no authentication, so it is not exposed with the
            service unless asked.
        metrics_timeout_seconds: Seconds a metrics request may take to arrive whole;
            a slower one is dropped. Default 5.
        metrics_max_connections: Metrics requests served at once; more are closed
            unanswered. Default 8.
        executor: Where attempts run: ``"local"`` worker processes (default),
            ``"ray"`` tasks on a Ray cluster, or ``"auto"`` (Ray when it is installed
            and a cluster is named).
        ray_address: The Ray cluster to join. Default ``RAY_ADDRESS``, else a Ray
            started on this machine.
        max_exports: ``ExportResults`` streams open at once; more are refused with
            ``RESOURCE_EXHAUSTED`` (``TOO_MANY_EXPORTS``). Default 8. Each holds a call
            thread while it runs (see ``rpc_threads``).
        max_exports_per_tenant: ``ExportResults`` streams of one tenant; more are refused
            with ``RESOURCE_EXHAUSTED`` ``TOO_MANY_TENANT_EXPORTS``. Default: a quarter of
            ``max_exports`` when tenants are configured; none without tokens.
    """

    model_config = SettingsConfigDict(env_prefix="PDFBATCH_", frozen=True, extra="ignore")

    address: str = DEFAULT_ADDRESS
    data_dir: Path = Path("data")
    workers: int | None = Field(default=None, ge=1, le=256)
    memory_limit_bytes: int | None = Field(default=2048 * _MIB, ge=64 * _MIB)
    cpu_limit_seconds: int | None = Field(default=240, ge=1)
    open_files_limit: int | None = Field(default=64, ge=16)
    worker_niceness: int = Field(default=19, ge=0, le=19)
    server_cpus: int = Field(default=1, ge=0, le=4096)
    server_cpus_max_watches: int = Field(default=8, ge=0)
    max_result_text_bytes: int = Field(default=DEFAULT_MAX_TEXT_BYTES, ge=1)
    max_metadata_field_bytes: int = Field(default=DEFAULT_MAX_METADATA_FIELD_BYTES, ge=1)
    max_outline_entries: int = Field(default=DEFAULT_MAX_OUTLINE_ENTRIES, ge=1)
    max_attachments: int = Field(default=DEFAULT_MAX_ATTACHMENTS, ge=1)
    max_result_name_bytes: int = Field(default=DEFAULT_MAX_NAME_BYTES, ge=1)
    max_page_details: int = Field(default=DEFAULT_MAX_PAGE_DETAILS, ge=1)
    limits: UploadLimits = Field(default_factory=UploadLimits)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    max_watchers: int = Field(default=64, ge=1)
    max_watchers_per_tenant: int | None = Field(default=None, ge=1)
    max_uploads: int = Field(default=32, ge=1)
    max_uploads_per_tenant: int | None = Field(default=None, ge=1)
    watch_queue_size: int = Field(default=4096, ge=1)
    inline_blob_max_bytes: int = Field(default=256 * 1024, ge=0, le=64 * _MIB)
    watch_max_events_per_message: int = Field(default=256, ge=1)
    watch_max_message_bytes: int = Field(default=_MIB, ge=1024)
    max_events_per_batch: int | None = Field(default=100_000, ge=0)
    event_retention_seconds: float | None = Field(default=7 * _DAY, ge=0)
    bytes_retention_seconds: float = Field(default=7 * _DAY, ge=0)
    records_retention_seconds: float | None = Field(default=None, ge=0)
    retention_sweep_seconds: float = Field(default=3600.0, gt=0)
    processor: str | None = None
    full_view_files: int = Field(default=100, ge=1, le=1_000)
    rpc_threads: int | None = Field(default=None, ge=2)
    max_concurrent_rpcs: int | None = Field(default=None, ge=1)
    shutdown_grace: float = Field(default=10.0, ge=0)
    stop_timeout: float = Field(default=10.0, gt=0)
    commit_interval_seconds: float = Field(default=0.005, ge=0, le=1.0)
    show_running_after_seconds: float = Field(default=0.1, ge=0, le=60.0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_address: str = "127.0.0.1"
    metrics_timeout_seconds: float = Field(default=5.0, gt=0)
    metrics_max_connections: int = Field(default=8, ge=1)
    executor: Literal["local", "ray", "auto"] = "local"
    ray_address: str | None = None
    max_exports: int = Field(default=8, ge=1)
    max_exports_per_tenant: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _threads_beyond_long_calls(self) -> Self:
        if self.rpc_threads is not None and self.rpc_threads <= self._long_calls:
            raise ValueError(
                "rpc_threads must be more than max_uploads + max_exports + max_open_streams"
            )
        return self

    @model_validator(mode="after")
    def _metadata_fits_one_message(self) -> Self:
        # A result's metadata goes in one message; gRPC refuses messages over 4 MiB.
        size = self.result_limits.max_metadata_message_bytes()
        if size > _MAX_METADATA_MESSAGE_BYTES:
            raise ValueError(
                f"a result's metadata could take {size:,} bytes, over the "
                f"{_MAX_METADATA_MESSAGE_BYTES:,} one message may: lower max_outline_entries, "
                "max_attachments, max_result_name_bytes or max_metadata_field_bytes"
            )
        return self

    @property
    def _long_calls(self) -> int:
        """Calls that may hold a thread for long, at most, all kinds together."""
        return self.max_uploads + self.max_exports + self.security.max_open_streams

    @property
    def threads(self) -> int:
        """Threads serving calls."""
        return self.rpc_threads or self._long_calls + 32

    @property
    def concurrent_rpcs(self) -> int:
        """Calls taken at once, running or queued for a thread."""
        return self.max_concurrent_rpcs or 2 * self.threads + self.max_watchers

    def watchers_per_tenant(self, *, tenants: bool) -> int | None:
        """One tenant's cap on watches (``tenants``: whether tenants are configured)."""
        return self.max_watchers_per_tenant or _share(self.max_watchers, tenants=tenants)

    def exports_per_tenant(self, *, tenants: bool) -> int | None:
        """One tenant's cap on exports (``tenants``: whether tenants are configured)."""
        return self.max_exports_per_tenant or _share(self.max_exports, tenants=tenants)

    def uploads_per_tenant(self, *, tenants: bool) -> int | None:
        """One tenant's cap on uploads (``tenants``: whether tenants are configured)."""
        return self.max_uploads_per_tenant or _share(self.max_uploads, tenants=tenants)

    @property
    def result_limits(self) -> ResultLimits:
        """How big one file's result may be."""
        return ResultLimits(
            max_text_bytes=self.max_result_text_bytes,
            max_metadata_field_bytes=self.max_metadata_field_bytes,
            max_outline_entries=self.max_outline_entries,
            max_attachments=self.max_attachments,
            max_name_bytes=self.max_result_name_bytes,
            max_page_details=self.max_page_details,
        )

    @property
    def retention(self) -> RetentionPolicy:
        """What ended batches keep, and for how long."""
        return RetentionPolicy(
            bytes_after_end=self.bytes_retention_seconds,
            records_after_end=self.records_retention_seconds,
            events_max_age=self.event_retention_seconds,
            sweep_interval=self.retention_sweep_seconds,
        )


def _share(total: int, *, tenants: bool) -> int | None:
    """A tenant's default share of a cap of ``total``: a quarter when there are tenants;
    none of its own for the one anonymous tenant, whom the cap of ``total`` bounds."""
    return max(1, total // 4) if tenants else None
