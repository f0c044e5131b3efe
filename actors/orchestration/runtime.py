"""The runtime: the one object the service (and the tests) drive.

It owns the batch manager and turns requests into messages. It is not an actor: the
waiting that actors must never do (for a cancel to finish, for children to stop) is done
here, on the caller's thread.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pykka
import structlog

from actors.execution.contract import Executor
from actors.orchestration.clock import Scheduler
from actors.orchestration.dispatch import Dispatcher
from actors.orchestration.file_actor import tell_if_alive
from actors.orchestration.manager import (
    BatchManager,
    EnsureSupervisor,
    ForgetSupervisor,
    ListSupervisors,
    SweepRetention,
)
from actors.orchestration.messages import (
    CancelBatch,
    CancelStarted,
    FilesArrived,
    GetView,
    RetryFiles,
    StopSupervisor,
    UploadComplete,
)
from actors.orchestration.supervisor import SupervisorDeps
from actors.orchestration.upload import (
    MAX_NAME_CHARS,
    NewFile,
    Upload,
    UploadEnded,
    discard_upload,
    validate_file_name,
)
from actors.orchestration.vault import PasswordVault
from actors.policy.catalogue import ErrorCode, StorageUnavailableError
from actors.policy.model import (
    BatchRecord,
    BatchState,
    BatchSummary,
    BatchView,
    ExtractionResult,
    FileRecord,
    FileState,
    ResultSummary,
)
from actors.policy.refusals import (
    BatchNotFound,
    FileNotFound,
    InvalidRequest,
    ResultNotAvailable,
    ServiceClosing,
)
from actors.policy.results import ResultLimits
from actors.policy.rules import BatchPolicy, RestartIntensity, RetryPolicy
from actors.storage.blobs import BlobStore
from actors.storage.retention import RetentionPolicy, SweepReport, collect_garbage
from actors.storage.store import Store

__all__ = [
    "DELETE_PAGE_FILES",
    "MAX_NAME_CHARS",
    "NewFile",
    "Runtime",
    "Upload",
    "UploadEnded",
    "validate_file_name",
]

# Files whose digests a deletion reads at once (see Runtime.delete).
DELETE_PAGE_FILES = 1_000

log = structlog.get_logger(__name__)

_UNSETTLED = frozenset(state for state in BatchState if not state.terminal)

_STATE_PHRASES = {
    FileState.PENDING: "is waiting to be processed",
    FileState.RUNNING: "is being processed",
    FileState.BACKOFF: "is waiting to be retried",
    FileState.SUCCEEDED: "succeeded but its result is missing",
    FileState.FAILED: "failed",
    FileState.CANCELLED: "was cancelled",
}


class Runtime:
    """Submits, watches over, retries and cancels batches.

    Args:
        store: Batch records.
        blobs: Uploaded bytes.
        executor: Runs attempts.
        scheduler: Clock and timers.
        rand: Uniform ``[0, 1)`` source for backoff jitter. Default ``random.random``.
        supervisor_intensity: Restarts of one batch supervisor allowed. Default 3 in 60 s.
        supervisor_backoff: Delays between repeated restarts of one batch supervisor.
            Default 0.5 s doubling up to 30 s, without jitter.
        stop_timeout: Seconds to wait for children to stop on cancel and close. Default 10.
        retention: What ended batches keep, swept on a timer. Default ``None``: keep
            everything until ``delete``.
        result_limits: How big one file's result may be; give the executor's workers
            the same. Default ``ResultLimits()``.
        commit_interval: Seconds a batch's group commit waits after the one before
            when no report is queued, to store more with it. Default 0: at once.
        show_running_after: Seconds a worker has run an attempt before its file is
            stored as ``RUNNING``; an attempt that ends sooner is stored by its end
            alone. Default 0: at the next group commit.
    """

    def __init__(
        self,
        *,
        store: Store,
        blobs: BlobStore,
        executor: Executor,
        scheduler: Scheduler,
        rand: Callable[[], float] = random.random,
        supervisor_intensity: RestartIntensity | None = None,
        supervisor_backoff: RetryPolicy | None = None,
        stop_timeout: float = 10.0,
        retention: RetentionPolicy | None = None,
        result_limits: ResultLimits | None = None,
        commit_interval: float = 0.0,
        show_running_after: float = 0.0,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self._scheduler = scheduler
        self._executor = executor
        self._passwords = PasswordVault()
        self._stop_timeout = stop_timeout
        self._closed = False
        self._submit_lock = threading.Lock()
        # Uploads this runtime opened and has not settled: what resume must leave alone.
        self._uploads_lock = threading.Lock()
        self._uploads: set[str] = set()
        self._dispatcher = Dispatcher(name="pdfbatch-file-actors")
        deps = SupervisorDeps(
            store=store,
            dispatcher=self._dispatcher,
            blobs=blobs,
            executor=executor,
            scheduler=scheduler,
            passwords=self._passwords,
            rand=rand,
            result_limits=result_limits or ResultLimits(),
            commit_interval=commit_interval,
            show_running_after=show_running_after,
        )
        intensity = supervisor_intensity or RestartIntensity(max_restarts=3, within_seconds=60)
        backoff = supervisor_backoff or RetryPolicy(
            initial_backoff=0.5, max_backoff=30.0, jitter="none"
        )
        self._manager = BatchManager.start(deps, intensity, backoff, retention)

    # Commands ----------------------------------------------------------------------

    def resume(self) -> list[str]:
        """Start a supervisor for every stored batch that is not terminal.

        Call once at start: after a restart or a crash, each supervisor picks its batch
        up where it was stored (attempts cut short are interrupted, not failed). A batch
        the store cannot load now is left as it is, and is resumed when someone asks
        for it or at the next start. Then the uploads a crash cut short are deleted
        (:meth:`discard_abandoned_uploads`).

        Returns:
            The ids of the batches resumed.

        Raises:
            StorageUnavailableError: The store cannot list its batches.
        """
        resumed: list[str] = []
        for record in self.store.batches_in(_UNSETTLED):
            try:
                self._supervisor(record.batch_id)
            except BatchNotFound:
                continue  # Deleted since it was listed.
            except StorageUnavailableError:
                log.exception("batch_not_resumed", batch_id=record.batch_id)
                continue
            resumed.append(record.batch_id)
        log.info("batches_resumed", count=len(resumed))
        # After the batches: deleting a big upload cut short takes a while, and nothing
        # waits for it.
        try:
            self.discard_abandoned_uploads()
        except (StorageUnavailableError, OSError):
            # Hidden, so harmless meanwhile: the next start tries again.
            log.exception("abandoned_uploads_not_discarded")
        return resumed

    def discard_abandoned_uploads(self) -> list[str]:
        """Delete the uploads a crash cut short, with the blobs nobody else refers to.

        Uploads this runtime opened are left alone. :meth:`resume` calls it. When it
        finds one, the crash may also have come after a group's blobs were placed and
        before the files that refer to them were stored: every blob no batch refers to
        is then deleted too (a walk over the whole blob store, paid only after such a
        crash).

        Returns:
            The ids of the uploads' batches deleted.

        Raises:
            StorageUnavailableError: The store failed; the next start carries on.
            OSError: A blob could not be deleted; retention removes it later.
        """
        discarded: list[str] = []
        for batch_id in self.store.uploads_in_progress():
            with self._uploads_lock:
                if batch_id in self._uploads:
                    continue
            blobs = discard_upload(self.store, self.blobs, batch_id)
            log.info("abandoned_upload_discarded", batch_id=batch_id, blobs_deleted=blobs)
            discarded.append(batch_id)
        if discarded:
            unreferenced = collect_garbage(self.store, self.blobs)
            log.info("unreferenced_blobs_deleted", blobs_deleted=unreferenced)
        return discarded

    def open_upload(
        self,
        *,
        name: str = "",
        policy: BatchPolicy | None = None,
        labels: Mapping[str, str] | None = None,
        owner: str = "",
        idempotency_key: str = "",
    ) -> Upload:
        """Store a new batch that nobody sees until its upload ends; see
        :class:`~actors.orchestration.upload.Upload` for what comes next.

        Raises:
            ServiceClosing: The runtime is shutting down.
            StorageUnavailableError: The store failed.
        """
        self._check_open()
        batch = self._new_batch(name, policy, labels, owner, idempotency_key)
        # Known as this runtime's before it is stored, so that a sweep of abandoned
        # uploads running now never takes it for one.
        with self._uploads_lock:
            self._uploads.add(batch.batch_id)
        try:
            self.store.begin_upload(batch)
        except BaseException:
            self._upload_settled(batch.batch_id)
            raise
        return Upload(
            batch,
            store=self.store,
            blobs=self.blobs,
            passwords=self._passwords,
            now=self._scheduler.now,
            check_open=self._check_open,
            arrived=self._files_arrived,
            started=self._start_uploaded,
            cancel=self._cancel_upload,
            closed=self._upload_settled,
        )

    def _files_arrived(self, batch_id: str, total: int, wait: bool) -> None:
        self._check_open()
        if wait:
            self._ask_uploading(batch_id, FilesArrived(total))
            return
        # Told: the upload does not wait behind the supervisor's reports. A message lost
        # to a restart is made up for by the next one (a total, not a number added),
        # and the last one, at the end, is asked.
        try:
            ref: pykka.ActorRef[Any] | None = self._manager.ask(
                EnsureSupervisor(batch_id, uploading=True), block=True
            )
        except pykka.ActorDeadError:
            raise ServiceClosing("The service is shutting down; try again shortly.") from None
        if ref is None:
            raise KeyError(batch_id)
        tell_if_alive(ref, FilesArrived(total))

    def _start_uploaded(self, batch_id: str, total: int) -> None:
        log.info("batch_submitted", batch_id=batch_id, files=total, uploaded=True)
        try:
            self._ask_uploading(batch_id, UploadComplete(total))
        except (StorageUnavailableError, ServiceClosing):
            # Stored and visible: a supervisor started from the store (when someone
            # asks for the batch, or at the next start) finishes it.
            log.exception("batch_not_started", batch_id=batch_id)

    def _ask_uploading(self, batch_id: str, message: object) -> None:
        """Ask the supervisor of an uploading batch, started if need be, following it
        across a restart."""
        for _ in range(3):
            try:
                ref: pykka.ActorRef[Any] | None = self._manager.ask(
                    EnsureSupervisor(batch_id, uploading=True), block=True
                )
                if ref is None:
                    raise KeyError(batch_id)
                ref.ask(message, block=True, timeout=self._stop_timeout)
                return
            except pykka.ActorDeadError:
                if self._closed:
                    break
                log.info("supervisor_restarted_during_upload", batch_id=batch_id)
        raise ServiceClosing("The batch's supervisor is restarting; try again shortly.")

    def _cancel_upload(self, batch_id: str) -> None:
        """Stop whatever the supervisor of an upload that will not end started, and
        forget the supervisor: nothing of the batch runs or commits after this."""
        try:
            ref: pykka.ActorRef[Any] | None = self._manager.ask(
                ForgetSupervisor(batch_id), block=True
            )
        except pykka.ActorDeadError:
            ref = None  # Closed: every supervisor was stopped already.
        if ref is not None:
            try:
                started: CancelStarted = ref.ask(
                    CancelBatch("its upload did not end as a batch"),
                    block=True,
                    timeout=self._stop_timeout,
                )
                self._executor.cancel_batch(batch_id, ErrorCode.CANCELLED)
                pykka.get_all(started.stops, timeout=self._stop_timeout)
                started.settled.get(timeout=self._stop_timeout)
            except pykka.ActorDeadError:
                pass  # Failed or stopped: its children were stopped with it.
            except pykka.Timeout:
                # Stopped below all the same; a late report finds no supervisor.
                log.warning("upload_cancel_slow", batch_id=batch_id)
            finally:
                ref.stop(block=True, timeout=self._stop_timeout)
        # Whatever a supervisor that failed meanwhile had started.
        self._executor.cancel_batch(batch_id, ErrorCode.CANCELLED)

    def _upload_settled(self, batch_id: str) -> None:
        with self._uploads_lock:
            self._uploads.discard(batch_id)

    def submit(
        self,
        files: Sequence[NewFile],
        *,
        name: str = "",
        policy: BatchPolicy | None = None,
        labels: Mapping[str, str] | None = None,
        owner: str = "",
        idempotency_key: str = "",
    ) -> BatchView:
        """Accept a batch and start processing it.

        With an ``idempotency_key`` already used by ``owner``, nothing new is created:
        the batch submitted with that key is returned as it is now.

        Raises:
            InvalidRequest: No files, or a bad file name.
            ServiceClosing: The runtime is shutting down.
        """
        self._check_open()
        if not files:
            raise InvalidRequest("A batch needs at least one file.", field="files")
        for new in files:
            validate_file_name(new.name)
        with self._submit_lock:
            if idempotency_key:
                existing = self.store.find_by_idempotency_key(owner, idempotency_key)
                if existing is not None:
                    return self.get(existing)
            return self._create(
                files,
                name=name,
                policy=policy,
                labels=labels,
                owner=owner,
                idempotency_key=idempotency_key,
            )

    def _create(
        self,
        files: Sequence[NewFile],
        *,
        name: str,
        policy: BatchPolicy | None,
        labels: Mapping[str, str] | None,
        owner: str,
        idempotency_key: str,
    ) -> BatchView:
        batch = self._new_batch(name, policy, labels, owner, idempotency_key)
        records = tuple(new.record(number) for number, new in enumerate(files, start=1))
        self.store.create_batch(BatchView(batch, records))
        for record, new in zip(records, files, strict=True):
            if new.password is not None:
                self._passwords.put(batch.batch_id, record.file_id, new.password)
        self._supervisor(batch.batch_id)
        log.info("batch_submitted", batch_id=batch.batch_id, files=len(records), owner=owner)
        return self.get(batch.batch_id)

    def _new_batch(
        self,
        name: str,
        policy: BatchPolicy | None,
        labels: Mapping[str, str] | None,
        owner: str,
        idempotency_key: str,
    ) -> BatchRecord:
        """The record of a batch submitted now, under a new id."""
        now = self._scheduler.now()
        return BatchRecord(
            batch_id=uuid.uuid4().hex,
            name=name,
            policy=policy or BatchPolicy(),
            state=BatchState.PENDING,
            created_at=now,
            updated_at=now,
            labels=dict(labels or {}),
            owner=owner,
            idempotency_key=idempotency_key,
        )

    def get(self, batch_id: str) -> BatchView:
        """The batch as last stored.

        Raises:
            BatchNotFound: No such batch.
        """
        view = self.store.load(batch_id)
        if view is None:
            raise BatchNotFound("No batch with this id exists.")
        return view

    def retry(
        self,
        batch_id: str,
        file_ids: Sequence[str] | None = None,
        *,
        passwords: Mapping[str, str] | None = None,
        requested_by: str = "",
        request_id: str = "",
    ) -> BatchSummary:
        """Retry chosen files, or every failed and cancelled file when none are chosen.

        Returns the batch and its counts after the retry (its files are read in pages,
        from the store's ``file_page``).

        ``requested_by`` and ``request_id`` say who asked, in the events and the log.

        Raises:
            BatchNotFound: No such batch.
            FileNotFound: A chosen file is not in the batch.
            RetryRefused: A chosen file cannot be retried; nothing was retried.
        """
        self._check_open()
        request = RetryFiles(
            tuple(file_ids) if file_ids else None,
            dict(passwords or {}),
            requested_by,
            request_id,
        )
        summary: BatchSummary = self._ask(batch_id, request)
        return summary

    def cancel(self, batch_id: str, reason: str = "client", request_id: str = "") -> BatchSummary:
        """Cancel the batch; returns the batch and its counts once nothing of it runs.

        Idempotent: cancelling a finished or cancelled batch returns it unchanged.

        Raises:
            BatchNotFound: No such batch.
        """
        if self.record(batch_id).state.terminal:
            # Settled, so its supervisor may have retired: no need to start one from the
            # store only to hear that nothing runs (unless a retry came in meanwhile).
            settled = self.store.batch_summary(batch_id)
            if settled is None:
                raise BatchNotFound("No batch with this id exists.")
            if settled.batch.state.terminal:
                return settled
        started: CancelStarted = self._ask(batch_id, CancelBatch(reason, request_id))
        # Kill the batch's processes here, on the caller's thread, rather than one by
        # one in each file actor: the actors then only learn that their attempts ended.
        self._executor.cancel_batch(batch_id, ErrorCode.CANCELLED)
        pykka.get_all(started.stops, timeout=self._stop_timeout)
        try:
            summary: BatchSummary = started.settled.get(timeout=self._stop_timeout)
        except pykka.ActorDeadError:
            # The supervisor died before it stored the end; its successor, started from
            # the store, finishes the cancel.
            summary = self._ask(batch_id, GetView())
        return summary

    def record(self, batch_id: str) -> BatchRecord:
        """The batch as last stored, without its files (cheap for any batch size).

        Raises:
            BatchNotFound: No such batch.
        """
        record = self.store.load_batch(batch_id)
        if record is None:
            raise BatchNotFound("No batch with this id exists.")
        return record

    def result(self, batch_id: str, file_id: str) -> ExtractionResult:
        """The whole result of a succeeded file, text included: for small results.

        Raises:
            BatchNotFound: No such batch.
            FileNotFound: No such file in the batch.
            ResultNotAvailable: The file has not succeeded.
        """
        self.result_summary(batch_id, file_id)
        result = self.store.load_result(batch_id, file_id)
        if result is None:  # deleted meanwhile
            raise BatchNotFound("No batch with this id exists.")
        return result

    def result_summary(self, batch_id: str, file_id: str) -> tuple[FileRecord, ResultSummary]:
        """A succeeded file and its result without the text; read that with
        :meth:`result_text`.

        Raises:
            BatchNotFound: No such batch.
            FileNotFound: No such file in the batch.
            ResultNotAvailable: The file has not succeeded.
        """
        # The one file, not the batch: a result of a million-file batch costs what one
        # of a small batch does.
        record = self.store.file_record(batch_id, file_id)
        if record is None:
            self.record(batch_id)  # BatchNotFound first, when it is the batch that is missing
            raise FileNotFound(f"The batch has no file with id {file_id!r}.", file_id=file_id)
        summary = self.store.result_summary(batch_id, file_id)
        if record.state is not FileState.SUCCEEDED or summary is None:
            raise ResultNotAvailable(
                f"The file {_STATE_PHRASES[record.state]}; only succeeded files have results.",
                file_id=file_id,
            )
        return record, summary

    def result_text(self, batch_id: str, file_id: str) -> Iterator[tuple[int, str]]:
        """The text of a result :meth:`result` found, piece by piece, in bounded memory.

        See :meth:`actors.storage.store.Store.result_text`.
        """
        return self.store.result_text(batch_id, file_id)

    def delete(
        self,
        batch_id: str,
        *,
        release: Callable[[Iterator[list[str]]], None] | None = None,
        page_files: int = DELETE_PAGE_FILES,
    ) -> None:
        """Cancel the batch if needed, then remove it, its results and passwords.

        Blobs are content-addressed and may be shared, so the batch's stay unless
        ``release`` is given: then the batch's bytes are marked released first (its
        blobs no longer count as in use, as retention marks them), and ``release`` gets
        the digests of its files a page of ``page_files`` at a time, to delete those no
        other batch keeps, before the records go. A batch of a million files is never
        read whole. If the bytes cannot be marked (a retry made the batch run again
        meanwhile), ``release`` is not called and retention removes the blobs later.

        Raises:
            BatchNotFound: No such batch.
        """
        self.cancel(batch_id, reason="deleted")
        ref: pykka.ActorRef[Any] | None = self._manager.ask(ForgetSupervisor(batch_id), block=True)
        if ref is not None:
            ref.stop(block=True, timeout=self._stop_timeout)
        if release is not None and self.store.release_bytes(batch_id, self._scheduler.now()):
            release(self._digest_pages(batch_id, page_files))
        self.store.delete_batch(batch_id)
        self._passwords.forget_batch(batch_id)

    def _digest_pages(self, batch_id: str, page_files: int) -> Iterator[list[str]]:
        """The blob digests of the batch's files, a page of files at a time."""
        after = -1
        while True:
            page = self.store.file_page(batch_id, states=(), after_position=after, limit=page_files)
            if page is None or not page.files:
                return
            yield [record.blob for _, record in page.files]
            after = page.files[-1][0]

    def sweep_retention(self) -> SweepReport | None:
        """Remove now what the retention policy no longer keeps (a timer does it too).

        Returns:
            What was removed; ``None`` without a retention policy, or when the store
            failed (the next sweep carries on).
        """
        report: SweepReport | None = self._manager.ask(SweepRetention(), block=True)
        return report

    def close(self) -> None:
        """Stop every batch's children and actors, leaving unfinished work to resume.

        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        supervisors: list[pykka.ActorRef[Any]] = self._manager.ask(ListSupervisors(), block=True)
        stops: list[pykka.Future[Any]] = []
        for ref in supervisors:
            try:
                stops.extend(ref.ask(StopSupervisor(), block=True, timeout=self._stop_timeout))
            except pykka.ActorDeadError:
                log.info("supervisor_already_stopped")
        pykka.get_all(stops, timeout=self._stop_timeout)
        for ref in supervisors:
            ref.stop(block=True, timeout=self._stop_timeout)
        self._manager.stop(block=True, timeout=self._stop_timeout)
        self._dispatcher.close(self._stop_timeout)

    # Plumbing ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceClosing("The service is shutting down; try again shortly.")

    def _supervisor(self, batch_id: str) -> pykka.ActorRef[Any]:
        ref: pykka.ActorRef[Any] | None = self._manager.ask(EnsureSupervisor(batch_id), block=True)
        if ref is None:
            raise BatchNotFound("No batch with this id exists.")
        return ref

    def _ask(self, batch_id: str, message: object) -> Any:
        """Ask the batch's supervisor, following it across a restart."""
        for _ in range(3):
            ref = self._supervisor(batch_id)
            try:
                return ref.ask(message, block=True, timeout=self._stop_timeout)
            except pykka.ActorDeadError:
                log.info("supervisor_restarted_during_ask", batch_id=batch_id)
        raise ServiceClosing("The batch's supervisor is restarting; try again shortly.")
