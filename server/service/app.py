"""The service process: wires store, blobs, workers, runtime and gRPC server together.

:class:`Service` owns everything it builds and shuts it down in order: health goes
``NOT_SERVING`` and new calls get ``UNAVAILABLE``; watches end so their clients resume
elsewhere; the attempts running at that moment get the grace period to finish; then the
server stops, and the runtime stops whatever still runs (leaving it to resume on the
next start), then the workers and the timers.
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import cast

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from actors.execution.factory import make_executor
from actors.execution.local.limits import ProcessLimits
from actors.execution.local.pool import DEFAULT_PROCESSOR, WorkerPool
from actors.execution.screening import ScreenedExecutor
from actors.orchestration.clock import ThreadScheduler
from actors.orchestration.runtime import Runtime
from actors.policy.model import BatchState, FileState
from actors.storage.blobs import BlobStore
from actors.storage.private import private_directory
from actors.storage.sqlite_store import SQLiteStore
from actors.storage.store import Store, each_event
from server.gen.pdfbatch.v1 import batch_pb2, batch_pb2_grpc
from server.security.auth import Authenticator, AuthInterceptor, TenantTokens, check_listen_address
from server.security.quotas import TenantQuotas
from server.security.ratelimit import RateLimiter
from server.security.tls import server_credentials
from server.service.affinity import ThreadPlacement, allowed_cpus, server_cpus
from server.service.calls import CallObserver, ObservingInterceptor
from server.service.caps import settings_caps
from server.service.metrics import ServiceMetrics
from server.service.metrics_http import MetricsServer
from server.service.servicer import BatchServicer, watch_handler
from server.service.serving import AsyncioServer
from server.service.settings import ServerSettings
from server.service.tracing import Tracing, tracing_from_environment
from server.service.upload import Uploads
from server.service.watch import WatchHub
from server.wire.decoding import DecodingInterceptor
from server.wire.paging import KEY_BYTES, PageTokens

__all__ = [
    "DATABASE_NAME",
    "PAGE_TOKEN_KEY_NAME",
    "SERVICE_NAME",
    "Service",
    "place_threads",
    "serve",
]

log = structlog.get_logger(__name__)

_UNSETTLED = tuple(state for state in BatchState if not state.terminal)
# Running files read at a time while the grace period waits for them.
_RUNNING_PAGE = 1_000

SERVICE_NAME: str = batch_pb2.DESCRIPTOR.services_by_name["BatchService"].full_name
# The batch database, in the data directory.
DATABASE_NAME = "pdfbatch.sqlite3"
# The key page tokens are signed with, in the data directory: kept across restarts, so
# that a client paging through a listing can go on after one.
PAGE_TOKEN_KEY_NAME = "page-tokens.key"


class Service:
    """A pdfbatch server and everything it runs on.

    Args:
        settings: Address, data directory, workers and limits.
        store: Batch records. Default a :class:`SQLiteStore` in
            ``<data_dir>/pdfbatch.sqlite3`` keeping ``settings.max_events_per_batch``
            events per batch, closed by :meth:`stop`.
        processor: What workers run on each file. Default ``settings.processor``,
            else the PDF extractor.
        clock: Monotonic seconds for the per-tenant rate limits. Default
            ``time.monotonic``.
        tracing: Traces of calls and attempts (:mod:`server.service.tracing`), shut
            down by :meth:`stop`. Default none.

    Raises:
        RuntimeError: The address cannot be bound.
        server.security.auth.ConfigurationError: The tokens or TLS files cannot be used, or the
            address is not loopback while no tokens are configured.
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        store: Store | None = None,
        processor: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self._tracing = tracing
        self._metrics: ServiceMetrics | None = None
        security = settings.security
        tokens = TenantTokens.load(security.tokens_file) if security.tokens_file else None
        self.authenticator = Authenticator(tokens)
        self._auth_failures = RateLimiter(
            "failed authentications",
            "AUTHENTICATION_RATE_EXCEEDED",
            rate=security.auth_failures_per_second,
            burst=security.auth_failure_burst,
            clock=clock,
        )
        credentials = server_credentials(
            security.tls_cert, security.tls_key, security.tls_client_ca
        )
        check_listen_address(settings.address, self.authenticator, tls=credentials is not None)
        self._stop_lock = threading.Lock()
        self._stopped = threading.Event()
        self._stopping = False
        self._metrics_http: MetricsServer | None = None
        with contextlib.ExitStack() as undo:
            undo.callback(self._stop_tracing)
            data = settings.data_dir
            # Everything below holds documents, their names and digests: the service's
            # user's alone.
            private_directory(data)
            private_directory(data / "work")
            # A killed service leaves its workers' directories and half-written uploads.
            _empty(data / "work")
            self._own_store: SQLiteStore | None = None
            if store is None:
                store = self._own_store = SQLiteStore(
                    data / DATABASE_NAME, max_events_per_batch=settings.max_events_per_batch
                )
                undo.callback(self._own_store.close)
            self.store: Store = store
            self.blobs = BlobStore(data / "blobs", inline_max_bytes=settings.inline_blob_max_bytes)
            undo.callback(self.blobs.close)
            self.blobs.sweep_temp()
            self.pool = make_executor(
                settings.executor,
                workers=settings.workers,
                ray_address=settings.ray_address,
                processor=processor or settings.processor or DEFAULT_PROCESSOR,
                memory_limit_bytes=settings.memory_limit_bytes,
                process_limits=ProcessLimits(
                    settings.cpu_limit_seconds,
                    settings.open_files_limit,
                    settings.worker_niceness,
                    # Every CPU, should serve() pin this process's threads to a few.
                    cpus=allowed_cpus(),
                ),
                result_limits=settings.result_limits,
                temp_root=data / "work",
            )
            undo.callback(self.pool.close)
            self.scheduler = ThreadScheduler()
            undo.callback(self.scheduler.close)
            self.runtime = Runtime(
                store=self.store,
                blobs=self.blobs,
                executor=ScreenedExecutor(self.pool),
                scheduler=self.scheduler,
                stop_timeout=settings.stop_timeout,
                retention=settings.retention,
                result_limits=settings.result_limits,
                commit_interval=settings.commit_interval_seconds,
                show_running_after=settings.show_running_after_seconds,
            )
            undo.callback(self.runtime.close)
            self.hub = WatchHub(
                self.store,
                queue_size=settings.watch_queue_size,
                max_watchers=settings.max_watchers,
                per_tenant=settings_caps(settings, "watchers", tenants=self.authenticator.required),
                max_events_per_message=settings.watch_max_events_per_message,
                max_message_bytes=settings.watch_max_message_bytes,
            )
            undo.callback(self.hub.close)
            self._rpc_threads = futures.ThreadPoolExecutor(
                max_workers=settings.threads, thread_name_prefix="pdfbatch-rpc"
            )
            undo.callback(self._rpc_threads.shutdown)
            self.servicer = self._build_servicer(clock)
            self.metrics_address = self._start_observers(undo)
            self.health = health.HealthServicer()
            self.server = self._build_server()
            undo.callback(self.server.close)
            undo.callback(lambda: self.server.stop(None).wait())
            if credentials is None:
                self.port = self.server.add_insecure_port(settings.address)
            else:
                self.port = self.server.add_secure_port(settings.address, credentials)
            if self.port == 0:
                raise RuntimeError(f"cannot listen on {settings.address}")
            undo.pop_all()

    def _build_servicer(self, clock: Callable[[], float]) -> BatchServicer:
        """The gRPC service over the runtime: its quotas, upload caps and rate limits."""
        security = self.settings.security
        settings = self.settings
        self.quotas = quotas = TenantQuotas(
            self.store,
            max_active_batches=security.max_active_batches,
            max_stored_bytes=security.max_stored_bytes,
        )
        tenants = self.authenticator.required
        self.open_uploads = settings_caps(settings, "uploads", tenants=tenants)
        uploads = Uploads(
            self.runtime,
            self.store,
            self.blobs,
            settings.limits,
            quotas=quotas,
            open_uploads=self.open_uploads,
        )
        return BatchServicer(
            self.runtime,
            self.store,
            uploads,
            self.hub,
            threads=self._rpc_threads,
            auth=self.authenticator,
            submissions=RateLimiter(
                "submissions",
                "SUBMISSION_RATE_EXCEEDED",
                rate=security.submissions_per_second,
                burst=security.submission_burst,
                clock=clock,
            ),
            retries=RateLimiter(
                "retries",
                "RETRY_RATE_EXCEEDED",
                rate=security.retries_per_second,
                burst=security.retry_burst,
                clock=clock,
            ),
            tokens=PageTokens(_page_token_key(self.settings.data_dir / PAGE_TOKEN_KEY_NAME)),
            full_view_files=settings.full_view_files,
            exports=settings_caps(settings, "exports", tenants=tenants),
        )

    def _start_observers(self, undo: contextlib.ExitStack) -> str | None:
        """Trace and serve Prometheus metrics if asked to; returns ``host:port`` or ``None``."""
        if self._tracing is not None:
            undo.callback(self.store.subscribe(each_event(self._tracing.observe)))
        port = self.settings.metrics_port
        if port is None:
            return None
        pool = self.pool if isinstance(self.pool, WorkerPool) else None
        metrics = self._metrics = ServiceMetrics(self.store, pool, lambda: self.hub.open_watches)
        undo.callback(self.store.subscribe(each_event(metrics.observe)))
        host = self.settings.metrics_address
        self._metrics_http = MetricsServer(
            metrics.registry,
            host,
            port,
            timeout=self.settings.metrics_timeout_seconds,
            max_connections=self.settings.metrics_max_connections,
        )
        undo.callback(self._stop_metrics)
        return f"{host}:{self._metrics_http.port}"

    def _stop_tracing(self) -> None:
        if self._tracing is not None:
            self._tracing.shutdown()

    def _stop_metrics(self) -> None:
        if self._metrics_http is not None:
            self._metrics_http.close()
            self._metrics_http = None

    def _build_server(self) -> AsyncioServer:
        server = AsyncioServer(
            self._rpc_threads,
            # Two servers must never share a port by accident.
            options=[("grpc.so_reuseport", 0)],
            # Beyond it a call is refused at once rather than queued for a thread.
            maximum_concurrent_rpcs=self.settings.concurrent_rpcs,
            # Calls are counted and traced first, so that refused ones are too; health and
            # reflection stay open (see server.security.auth); a request that does not
            # decode is the caller's mistake, not an internal error (see server.wire.decoding).
            interceptors=[
                *(ObservingInterceptor(observer) for observer in self._call_observers()),
                AuthInterceptor(
                    self.authenticator,
                    self._auth_failures,
                    open_streams=self.settings.security.max_open_streams,
                ),
                DecodingInterceptor(),
            ],
        )
        # Only its two registration methods are called: AsyncioServer has them.
        batch_pb2_grpc.add_BatchServiceServicer_to_server(self.servicer, cast(grpc.Server, server))
        # Replaces the generated one, which would serialize the serialized events again.
        server.add_registered_method_handlers(
            SERVICE_NAME, {"WatchBatch": watch_handler(self.servicer)}
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, cast(grpc.Server, server))
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        return server

    def _call_observers(self) -> list[CallObserver]:
        observers: list[CallObserver] = []
        if self._metrics is not None:
            observers.append(self._metrics.rpcs)
        if self._tracing is not None:
            observers.append(self._tracing)
        return observers

    @property
    def address(self) -> str:
        """``host:port`` the server listens on, with the port actually bound."""
        host = self.settings.address.rpartition(":")[0]
        return f"{host}:{self.port}"

    def start(self) -> None:
        """Start serving and report ``SERVING``, then resume the unfinished batches."""
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", address=self.address)
        try:
            self.runtime.resume()
        except Exception:
            # A batch not resumed now is resumed when it is cancelled or retried, or
            # at the next start.
            log.exception("batches_not_resumed")

    def stop(self, grace: float | None = None) -> None:
        """Shut down in order (see the module's description). Idempotent; blocks.

        Args:
            grace: Seconds the running attempts and calls get. Default
                ``settings.shutdown_grace``.
        """
        with self._stop_lock:
            if self._stopping:
                self._stopped.wait()
                return
            self._stopping = True
        grace = self.settings.shutdown_grace if grace is None else grace
        deadline = time.monotonic() + grace
        log.info("shutting_down", grace=grace)
        with contextlib.ExitStack() as steps:
            # Run last to first, each even if an earlier one failed.
            steps.callback(self._stopped.set)
            steps.callback(log.info, "stopped")
            if self._own_store is not None:
                steps.callback(self._own_store.close)
            steps.callback(self.blobs.close)
            steps.callback(self.scheduler.close)
            steps.callback(self.pool.close)
            steps.callback(self._stop_metrics)
            # After the runtime: the attempts it interrupts are traced too.
            steps.callback(self._stop_tracing)
            steps.callback(self.runtime.close)
            # The loop outlives the handler threads, which may still ask it for a message.
            steps.callback(self.server.close)
            steps.callback(self._rpc_threads.shutdown, wait=True)
            steps.callback(lambda: self.server.stop(max(0.0, deadline - time.monotonic())).wait())
            self.health.enter_graceful_shutdown()
            self.servicer.start_closing()
            self.hub.close()
            self._let_running_attempts_finish(deadline)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`stop` has finished; whether it has."""
        return self._stopped.wait(timeout)

    def _running(self) -> set[tuple[str, str, int]]:
        """(batch, file, attempt) of every attempt running now: the running files of the
        batches not settled, a page at a time from an index (asked again at every event
        of the grace period, so never a whole batch)."""
        running = set()
        for record in self.store.batches_in(_UNSETTLED):
            after = -1
            while True:
                page = self.store.file_page(
                    record.batch_id,
                    states=(FileState.RUNNING,),
                    after_position=after,
                    limit=_RUNNING_PAGE,
                )
                if page is None:
                    break
                for position, file in page.files:
                    running.add((record.batch_id, file.file_id, len(file.attempts)))
                    after = position
                if len(page.files) < _RUNNING_PAGE:
                    break
        return running

    def _let_running_attempts_finish(self, deadline: float) -> None:
        """Wait until the attempts running now have ended, or until ``deadline``.

        Attempts that start meanwhile are not waited for: they are cut short with the
        rest when the runtime closes, and resume on the next start.
        """
        try:
            waiting = self._running()
        except Exception:
            # Without knowing what runs, give it nothing: everything is stopped below
            # and resumes on the next start.
            log.exception("running_attempts_unknown")
            return
        if not waiting:
            return
        # The listener only sets a flag: it runs on the committing thread and must not
        # wait for this one.
        changed = threading.Event()
        unsubscribe = self.store.subscribe(lambda _: changed.set())
        try:
            while waiting & self._running():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.info("grace_period_over", still_running=len(waiting & self._running()))
                    return
                changed.wait(remaining)
                changed.clear()
        finally:
            unsubscribe()


def _page_token_key(path: Path) -> bytes:
    """The key in ``path``, made (random, mode 0600) if there is none or it is too short."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = b""
    if len(key) >= KEY_BYTES:
        return key
    key = secrets.token_bytes(KEY_BYTES)
    temporary = path.with_name(path.name + ".new")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return key


def _empty(directory: Path) -> None:
    """Remove everything inside ``directory``."""
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def freeze_startup_heap() -> None:
    """Collect once, then move every object the process holds to the garbage
    collector's permanent generation (:func:`gc.freeze`), where no collection looks.

    For the process that serves, once its service is made and before it starts: what the
    imports made (modules, classes; 66,500 of the 67,100 objects a started service
    holds) lives as long as the process, yet every full collection went through all of
    it again, 45 to 140 ms holding the interpreter and so pausing every thread (watches,
    commits, cancels alike). Before the start, so that nothing of the batches it resumes
    is frozen: a frozen object is never collected, even once unreachable. With it, and
    with stopped file actors freed as soon as they are dropped, the collector spent 80
    to 86 ms instead of 575 to 815 ms while 15,000 files went through the ``feed``
    scenario, its longest pause 2 to 7 ms instead of 135 to 143.
    """
    gc.collect()
    gc.freeze()


def place_threads(service: Service, settings: ServerSettings) -> ThreadPlacement | None:
    """Keep the process's threads on ``settings.server_cpus`` CPUs while at most
    ``settings.server_cpus_max_watches`` watches of ``service`` are open, as ``pdfbatch
    serve`` does (:mod:`server.service.affinity`); ``None`` when they stay on every CPU
    (the setting is 0, or the kernel refused: only slower).
    """
    everywhere = allowed_cpus()
    pinned = server_cpus(settings.server_cpus, everywhere)
    if pinned is None or everywhere is None:
        return None
    placement = ThreadPlacement(pinned, everywhere, settings.server_cpus_max_watches)
    try:
        placement.place()
    except OSError as exc:
        log.warning("server_threads_not_pinned", cpus=sorted(pinned), error=str(exc))
        return None
    service.hub.follow_count(placement.watches)
    return placement


def serve(settings: ServerSettings) -> int:
    """Run the service until SIGTERM or SIGINT, then shut it down gracefully.

    Prints ``listening on HOST:PORT`` on standard output once it serves.

    Returns:
        The process's exit code: 0.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        log.info("signal_received", signal=signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        service = Service(settings, tracing=tracing_from_environment())
        # Once Ray's processes, if any, have started: they keep every CPU.
        place_threads(service, settings)
        freeze_startup_heap()
        service.start()
        print(f"listening on {service.address}", flush=True)
        try:
            stop.wait()
        finally:
            service.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
