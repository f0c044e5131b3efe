"""What a batch holds, as one digest: how an upload repeating an idempotency key is told
from an upload of other files without holding either batch's files in memory.

The digest covers each file's name, blob and size, in submission order (not its
password, which the service never compares). It is built a file at a time as the
upload's files arrive, and stored with the batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol

__all__ = ["ContentsDigest", "FileContent", "contents_digest"]


class FileContent(Protocol):
    """A file as the digest sees it."""

    @property
    def name(self) -> str: ...
    @property
    def blob(self) -> str: ...
    @property
    def size(self) -> int: ...


class ContentsDigest:
    """The sha256 of a batch's ordered ``(name, blob, size)`` list, a file at a time.

    Each file is framed by the length of its name, so that no two lists of files give
    the same bytes to hash.
    """

    __slots__ = ("_hash", "files")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.files = 0

    def add(self, file: FileContent) -> None:
        """Count ``file`` in, after the files added before it."""
        name = file.name.encode()
        self._hash.update(b"%d:%s\0%s\0%d\n" % (len(name), name, file.blob.encode(), file.size))
        self.files += 1

    def hexdigest(self) -> str:
        """The digest of the files added so far (more may be added after)."""
        return self._hash.hexdigest()


def contents_digest(files: Iterable[FileContent]) -> str:
    """The :class:`ContentsDigest` of ``files``, in their order."""
    digest = ContentsDigest()
    for file in files:
        digest.add(file)
    return digest.hexdigest()
