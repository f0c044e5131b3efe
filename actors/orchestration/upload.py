"""An upload in progress: a batch stored as its files arrive, seen by nobody until it ends.

The upload's batch is stored when the upload begins and its files a group at a time
(:meth:`Upload.add`), so that the service holds no file of it in memory however many
arrive (issue 15: a million files in one upload). Its supervisor starts with the first
group and processes the files as they arrive (issue 16): after each group it is told
how many files the batch has (it owns the counts), and it does not settle before the
end. Until :meth:`Upload.finish`, the store shows the batch to no reader but its
supervisor; then, in one transaction, it becomes visible with its idempotency key, and
the supervisor is told that it may settle. An upload that does not finish is deleted
with :meth:`Upload.abort`: its started work is cancelled and waited for, then the batch
is deleted a page of files at a time, with the blobs nobody else refers to; one a crash
left behind is deleted by the next start
(:meth:`~actors.orchestration.runtime.Runtime.resume`).

An idempotency key is looked up when the upload ends, in the transaction that would
record it: an upload that repeats a key is compared with the batch holding it by the
digest of their ordered files (:mod:`actors.policy.contents`), never by holding both.

Rejected: keeping the files in a staging table copied into the batch at the end. The
copy of a million rows would hold the end of the upload for seconds, and processing
could not start before the end (issue 16 wants it to start while the upload runs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from actors.orchestration.vault import PasswordVault
from actors.policy.catalogue import has_hidden_characters
from actors.policy.contents import ContentsDigest
from actors.policy.model import BatchRecord, FileRecord
from actors.policy.refusals import InvalidRequest
from actors.storage.blobs import BlobStore
from actors.storage.store import Store

__all__ = [
    "DROP_PAGE",
    "MAX_NAME_CHARS",
    "NewFile",
    "Upload",
    "UploadEnded",
    "discard_upload",
    "validate_file_name",
]

MAX_NAME_CHARS = 255
# Files deleted per transaction (and per hold of the blob lock) when an upload is dropped.
DROP_PAGE = 1000
# Files read per page when a batch stored without its contents digest is compared.
_COMPARE_PAGE = 1000


def validate_file_name(name: str) -> None:
    """Refuse names that could be mistaken for paths or that hide characters.

    Raises:
        InvalidRequest: The name is empty, too long, has a path separator, or a
            control, format or separator character.
    """
    if not name or len(name) > MAX_NAME_CHARS:
        raise InvalidRequest(
            f"A file name must have 1 to {MAX_NAME_CHARS} characters.", field="name"
        )
    if "/" in name or "\\" in name or name in (".", ".."):
        raise InvalidRequest(
            "A file name is a label, not a path: remove '/' and '\\'.", field="name"
        )
    if has_hidden_characters(name):
        raise InvalidRequest(
            "A file name must not contain control, format or separator characters "
            "(such as U+202E or U+200B): they make it print as another name.",
            field="name",
        )


@dataclass(frozen=True, slots=True)
class NewFile:
    """A file to submit whose bytes are already in the blob store."""

    name: str
    blob: str
    size: int
    password: str | None = field(default=None, repr=False)

    def record(self, number: int) -> FileRecord:
        """The file's record as the ``number``-th of its batch (from 1): ids are numbered
        in submission order (f00001, ..., f100000)."""
        return FileRecord(
            file_id=f"f{number:05d}",
            name=self.name,
            blob=self.blob,
            size=self.size,
            encrypted_with_password=self.password is not None,
        )


@dataclass(frozen=True, slots=True)
class UploadEnded:
    """How an upload ended.

    Attributes:
        batch_id: The batch the upload stands for: its own, or the owner's earlier
            batch with the same idempotency key.
        created: Whether the upload's own batch was stored (and started).
        same_files: Whether that batch holds the upload's files, in the same order
            (always, when ``created``).
    """

    batch_id: str
    created: bool
    same_files: bool


class Upload:
    """One upload's batch, stored as its files arrive; made by
    :meth:`~actors.orchestration.runtime.Runtime.open_upload`.

    Not thread-safe: one upload belongs to one call.

    Args:
        batch: The batch record, stored already as uploading.
        store: Where its files go.
        blobs: Their bytes, released by :meth:`abort`.
        passwords: Where the files' passwords are kept until their files end.
        now: The batch clock.
        check_open: Raises when the runtime no longer takes batches.
        arrived: Tells the batch's supervisor (started if need be) how many files the
            batch has, once they are stored: it processes them from then on; with
            ``True``, returns once it has committed their counts.
        started: Tells the supervisor that the batch is visible, with its number of
            files: it may settle from then on.
        cancel: Cancels whatever the supervisor started, waits for it to stop, and
            forgets the supervisor.
        closed: Told the upload's id once it is settled either way.
    """

    def __init__(
        self,
        batch: BatchRecord,
        *,
        store: Store,
        blobs: BlobStore,
        passwords: PasswordVault,
        now: Callable[[], float],
        check_open: Callable[[], None],
        arrived: Callable[[str, int, bool], None],
        started: Callable[[str, int], None],
        cancel: Callable[[str], None],
        closed: Callable[[str], None],
    ) -> None:
        self.batch = batch
        self._store = store
        self._blobs = blobs
        self._passwords = passwords
        self._now = now
        self._check_open = check_open
        self._arrived = arrived
        self._started = started
        self._cancel = cancel
        self._closed = closed
        self._contents = ContentsDigest()
        self._settled = False

    @property
    def batch_id(self) -> str:
        """The batch's id (nobody else knows it before the upload ends)."""
        return self.batch.batch_id

    @property
    def files(self) -> int:
        """How many files were added."""
        return self._contents.files

    def add(self, files: Sequence[NewFile], *, announce: bool = True) -> None:
        """Store ``files`` after those added before, in one transaction; with
        ``announce``, then have them processed (:meth:`announce`).

        Their blobs are placed and durable already (they are processed as soon as they
        are announced): hold ``blobs.reference_lock`` from placing them to this call, so
        that no one deletes a blob before the batch refers to it.

        Raises:
            InvalidRequest: A bad file name; nothing was added.
            ValueError: The upload has ended.
            StorageUnavailableError: The store failed; nothing was added.
        """
        if self._settled:
            raise ValueError("the upload has ended")
        for new in files:
            validate_file_name(new.name)
        first = self.files
        records = [new.record(number) for number, new in enumerate(files, start=first + 1)]
        self._store.add_upload_files(self.batch_id, first, records)
        for record, new in zip(records, files, strict=True):
            self._contents.add(record)
            if new.password is not None:
                self._passwords.put(self.batch_id, record.file_id, new.password)
        if announce:
            self.announce()

    def announce(self, *, wait: bool = True) -> None:
        """Have the files added so far processed: the batch's supervisor (started with
        the first group) counts them; with ``wait``, it has committed the counts when
        this returns (the end asks so: every file is counted before the batch shows).

        Raises:
            ServiceClosing: The runtime is shutting down.
            StorageUnavailableError: The store failed; the files stay stored, and are
                counted with the next group or at the end.
        """
        if self.files and not self._settled:
            self._arrived(self.batch_id, self.files, wait)

    def finish(self) -> UploadEnded:
        """Make the batch visible and start processing it, in one transaction with its
        idempotency key; unless the key went to another batch first.

        Every blob added must be durable first (:meth:`BlobStore.sync`). When the key
        names another batch, this upload is left as it is: :meth:`abort` it.

        Raises:
            InvalidRequest: No file was added.
            ServiceClosing: The runtime is shutting down.
            ValueError: The upload has ended.
            StorageUnavailableError: The store failed; the upload is as it was.
        """
        if self._settled:
            raise ValueError("the upload has ended")
        if not self.files:
            raise InvalidRequest("A batch needs at least one file.", field="files")
        self._check_open()
        contents = self._contents.hexdigest()
        # Every file counted before the batch is visible: its counts are then whole.
        self.announce()
        batch_id = self._store.end_upload(self.batch_id, contents=contents, at=self._now())
        if batch_id != self.batch_id:
            return UploadEnded(batch_id, False, self._contents_of(batch_id) == contents)
        self._settled = True
        self._closed(batch_id)
        self._started(batch_id, self.files)
        return UploadEnded(batch_id, True, True)

    def abort(self) -> None:
        """Cancel and wait for whatever of the batch was started, then delete the batch,
        its files and the blobs nobody else refers to.

        Idempotent, and nothing once :meth:`finish` stored the batch. Takes the blob
        lock a page at a time: never call it holding ``blobs.reference_lock``.

        Raises:
            StorageUnavailableError: The store failed; the next start deletes the rest.
            OSError: A blob could not be deleted; retention removes it later.
        """
        if self._settled:
            return
        self._settled = True
        try:
            # Nothing of it runs or commits any more before its rows are deleted.
            self._cancel(self.batch_id)
            self._passwords.forget_batch(self.batch_id)
            discard_upload(self._store, self._blobs, self.batch_id)
        finally:
            self._closed(self.batch_id)

    def _contents_of(self, batch_id: str) -> str | None:
        """The digest of another batch's files: stored with it, or read in pages."""
        stored = self._store.batch_contents(batch_id)
        if stored is not None:
            return stored
        digest = ContentsDigest()
        after = -1
        while True:
            page = self._store.file_page(
                batch_id, states=(), after_position=after, limit=_COMPARE_PAGE
            )
            if page is None:
                return None  # Deleted meanwhile: nothing to be the same as.
            for position, record in page.files:
                digest.add(record)
                after = position
            if len(page.files) < _COMPARE_PAGE:
                return digest.hexdigest()


def discard_upload(store: Store, blobs: BlobStore, batch_id: str, *, page: int = DROP_PAGE) -> int:
    """Delete an uploading batch a page of files at a time, with each page's blobs that
    no batch refers to any more; returns how many blobs were deleted.

    Each page is one transaction under ``blobs.reference_lock``, so uploads side by
    side wait for one page at most.

    Raises:
        StorageUnavailableError: The store failed; what was deleted stays deleted.
        OSError: A blob could not be deleted.
    """
    deleted = 0
    while True:
        with blobs.reference_lock:
            unused = store.drop_upload(batch_id, limit=page)
            if unused is None:
                return deleted
            blobs.delete_many(unused)
            if unused:
                blobs.scrub()
            deleted += len(unused)
