"""``pdfbatch export``: every file of a batch, with its text, in one call.

Three targets, chosen by ``-o``:

- ``-`` (the default): JSON Lines on standard output, one object per file.
- a ``*.jsonl`` (or ``*.ndjson``, ``*.json``) file: the same lines, written to
  ``NAME.partial`` and renamed to ``NAME`` once the last file is in. An existing ``NAME``
  stays as it was until then.
- a directory (one that exists, or a path ending with ``/``): a ``.txt`` per succeeded
  file, its pages separated by form feeds, named after the upload and the file id
  (:func:`text_file_name`), and ``index.jsonl`` describing every file (written as
  ``index.jsonl.partial`` until the end, like a JSON Lines target).

An export that stops (interrupted, a broken connection) leaves its ``.partial`` file,
whose complete lines are files exported whole. Running the same command again resumes
after the last complete line, provided it is of the same batch; anything else starts
over. ``--after FILE_ID`` starts after that file instead (and, with a file target,
starts a new file).

Each object has ``file_id``, ``batch_id``, ``name``, ``state``, ``attempts``, ``error``
(``code`` and ``message``, or null), ``warnings``, ``metadata`` (the result's, without
the fields above; null unless the file succeeded), then ``pages`` (``number`` and
``text``), or, in a directory's index, ``text_file``. The text is streamed into the
line as it arrives: neither side holds a whole batch or a whole text.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from google.protobuf import json_format

from server.cli.progress import batch_state_name, file_state_name, terminal_safe
from server.client.api import Client
from server.gen.pdfbatch.v1 import batch_pb2 as pb

__all__ = ["ExportTargetError", "export", "target_kind", "text_file_name"]

_JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
_INDEX = "index.jsonl"
_PARTIAL = ".partial"
# Where a resumed file's last line says which file it was: the first two keys.
_LINE_START = re.compile(r'\{"file_id": ("(?:[^"\\]|\\.)*"), "batch_id": ("(?:[^"\\]|\\.)*")')
_SCAN_BYTES = 64 * 1024
_TERMINAL_STATES = (
    pb.BATCH_STATE_SUCCEEDED,
    pb.BATCH_STATE_PARTIALLY_SUCCEEDED,
    pb.BATCH_STATE_FAILED,
    pb.BATCH_STATE_CANCELLED,
)
# Characters JSON leaves as they are but line readers split on (str.splitlines()).
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})
# Kept out of a text file's name: path separators, what Windows refuses, and characters
# that print as something else or not at all.
_NAME_UNSAFE = frozenset('/\\:*?"<>|')
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_MAX_STEM_BYTES = 120
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{d}{n}" for d in ("COM", "LPT") for n in range(1, 10)}
)
_REDRAW_SECONDS = 0.1


class ExportTargetError(ValueError):
    """``-o`` names something that is neither a JSON Lines file nor a directory."""


def target_kind(output: str) -> str:
    """``"stdout"``, ``"jsonl"`` or ``"directory"``: what ``-o OUTPUT`` writes.

    Raises:
        ExportTargetError: ``output`` is neither ``-``, a directory (existing, or
            ending with ``/``) nor a ``*.jsonl`` file.
    """
    if output == "-":
        return "stdout"
    path = Path(output)
    if path.is_dir() or output.endswith(("/", os.sep)):
        return "directory"
    if path.suffix.lower() in _JSON_SUFFIXES or path.is_file():
        return "jsonl"
    raise ExportTargetError(
        f"cannot tell whether {output!r} is meant as a file or a directory: name a JSON "
        f"Lines file ending in .jsonl, or a directory ending with '/' ({output}/)"
    )


def text_file_name(name: str, file_id: str) -> str:
    """The name of a succeeded file's text in a directory export: ``STEM.FILE_ID.txt``.

    ``STEM`` is the upload's name without ``.pdf``, with path separators, characters
    Windows refuses and invisible ones (controls, format characters such as U+202E,
    line separators) replaced by ``_``; no leading dot or dash (no hidden file, no
    ``..``, nothing a shell tool takes for an option), no trailing dot or space, at most
    120 bytes of UTF-8. The file id, unique in the batch, keeps names apart however
    alike the uploads' names are.
    """
    stem = name[:-4] if name.lower().endswith(".pdf") else name
    stem = "".join(
        "_" if char in _NAME_UNSAFE or unicodedata.category(char) in _HIDDEN_CATEGORIES else char
        for char in stem
    )
    stem = stem.encode("utf-8")[:_MAX_STEM_BYTES].decode("utf-8", errors="ignore")
    stem = stem.lstrip(" .-").rstrip(" .") or "file"
    if stem.upper() in _WINDOWS_DEVICES:
        stem = f"_{stem}"
    ident = re.sub(r"[^A-Za-z0-9_-]", "_", file_id)[:64] or "file"
    return f"{stem}.{ident}.txt"


# Lines ------------------------------------------------------------------------------


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False).translate(_LINE_BREAKS)


def _head(batch_id: str, exported: pb.ExportedFile) -> dict[str, Any]:
    """Everything of a file's line but its pages, keys in the order written."""
    status = exported.status
    error = (
        {"code": status.error.code, "message": status.error.message}
        if status.HasField("error")
        else None
    )
    warnings: list[dict[str, Any]] = []
    metadata: dict[str, Any] | None = None
    if exported.HasField("result"):
        result = exported.result
        warnings = [
            {"code": w.code, "message": w.message, "place": w.place, "count": w.count}
            for w in result.warnings
        ]
        metadata = json_format.MessageToDict(
            result, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for key in ("batch_id", "file_id", "name", "warnings"):
            metadata.pop(key, None)
    return {
        "file_id": status.file_id,
        "batch_id": batch_id,
        "name": status.name,
        "state": file_state_name(status.state),
        "attempts": status.attempt_count,
        "error": error,
        "warnings": warnings,
        "metadata": metadata,
    }


class _Writer:
    """Receives an export file by file: :meth:`start`, :meth:`text` per piece, :meth:`end`."""

    def start(self, batch_id: str, exported: pb.ExportedFile) -> None:
        raise NotImplementedError

    def text(self, page_number: int, piece: str) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


class _JsonLines(_Writer):
    """One line per file, its pages' text written into the line piece by piece."""

    def __init__(self, write: Callable[[str], object]) -> None:
        self._write = write
        self._page = 0

    def start(self, batch_id: str, exported: pb.ExportedFile) -> None:
        self._write(_json(_head(batch_id, exported))[:-1] + ', "pages": [')
        self._page = 0

    def text(self, page_number: int, piece: str) -> None:
        if page_number != self._page:
            if self._page:
                self._write('"}, ')
            self._write(f'{{"number": {page_number}, "text": "')
            self._page = page_number
        self._write(_json(piece)[1:-1])

    def end(self) -> None:
        self._write('"}]}\n' if self._page else "]}\n")


class _Directory(_Writer):
    """A ``.txt`` per succeeded file (written aside, then renamed), and an index line."""

    def __init__(self, directory: Path, index: Callable[[str], object]) -> None:
        self._directory = directory
        self._index = index
        self._head: dict[str, Any] = {}
        self._text: TextIO | None = None
        self._page = 0

    def start(self, batch_id: str, exported: pb.ExportedFile) -> None:
        self._head = _head(batch_id, exported)
        self._head["text_file"] = None
        self._page = 0
        if exported.HasField("result"):
            name = text_file_name(exported.status.name, exported.status.file_id)
            self._head["text_file"] = name
            self._text = (self._directory / (name + _PARTIAL)).open(
                "w", encoding="utf-8", newline=""
            )

    def text(self, page_number: int, piece: str) -> None:
        if self._text is None:
            return
        if page_number != self._page:
            if self._page:
                self._text.write("\f")
            self._page = page_number
        self._text.write(piece)

    def end(self) -> None:
        if self._text is not None:
            self._text.close()
            self._text = None
            name = self._head["text_file"]
            os.replace(self._directory / (name + _PARTIAL), self._directory / name)
        self._index(_json(self._head) + "\n")

    def close(self) -> None:
        """Close a text left open by an export that stopped (its ``.partial`` remains)."""
        if self._text is not None:
            self._text.close()
            self._text = None


# Resuming ---------------------------------------------------------------------------


def _resume(partial: Path, batch_id: str) -> tuple[str, int] | None:
    """Where to go on with ``partial``: the last whole line's file id and how many
    whole lines there are; ``None`` to start over. Cuts off an incomplete last line."""
    try:
        handle = partial.open("r+b")
    except FileNotFoundError:
        return None
    with handle:
        end = _after_last_newline(handle, handle.seek(0, os.SEEK_END))
        handle.truncate(end)
        if end == 0:
            return None
        start = _after_last_newline(handle, end - 1)
        handle.seek(start)
        opening = handle.read(min(end - start, 4096)).decode("utf-8", errors="replace")
        match = _LINE_START.match(opening)
        if match is None or json.loads(match.group(2)) != batch_id:
            print(
                f"pdfbatch export: {terminal_safe(str(partial))} is not an export of batch "
                f"{batch_id}: starting over.",
                file=sys.stderr,
            )
            return None
        handle.seek(0)
        lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(_SCAN_BYTES), b""))
        return str(json.loads(match.group(1))), lines


def _after_last_newline(handle: BinaryIO, before: int) -> int:
    """The offset just past the last ``\\n`` before offset ``before``; 0 if none."""
    position = before
    while position > 0:
        size = min(_SCAN_BYTES, position)
        position -= size
        handle.seek(position)
        found = handle.read(size).rfind(b"\n")
        if found >= 0:
            return position + found + 1
    return 0


# Progress ---------------------------------------------------------------------------


class _Progress:
    """One line on a terminal, redrawn in place at most ten times a second."""

    def __init__(
        self,
        stream: TextIO,
        total: int,
        done: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._stream = stream
        self._total = total
        self._done = done
        self._start_done = done
        self._chars = 0
        self._started = clock()
        self._drawn: float | None = None

    def advance(self, files: int = 0, chars: int = 0) -> None:
        self._done += files
        self._chars += chars
        now = self._clock()
        if self._drawn is None or now - self._drawn >= _REDRAW_SECONDS:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-6)
        rate = (self._done - self._start_done) / elapsed
        left = max(self._total - self._done, 0)
        eta = f", {_clock(left / rate)} left" if rate > 0 and left else ""
        line = (
            f"export: {self._done}/{self._total} files, {self._chars / 1e6:.1f}M characters, "
            f"{rate:.1f} files/s{eta}"
        )
        width = _terminal_width(self._stream)
        self._stream.write("\r" + line[: width - 1] + "\x1b[K")
        self._stream.flush()

    def close(self) -> None:
        self._stream.write("\r\x1b[K")
        self._stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return 80


# The command ------------------------------------------------------------------------


def _messages(
    client: Client, batch_id: str, after: str
) -> tuple[pb.Batch, Iterator[pb.ExportResultsResponse]]:
    stream = client.export_stream(batch_id, after=after)
    first = next(stream, None)
    if first is None or not first.HasField("batch"):
        raise RuntimeError("the service's export did not start with its batch")
    return first.batch, stream


class _Tally:
    """What an export wrote: files by state, and the last file written whole."""

    def __init__(self) -> None:
        self.states: Counter[str] = Counter()
        self.last_whole = ""


def _pump(
    batch: pb.Batch,
    stream: Iterator[pb.ExportResultsResponse],
    writer: _Writer,
    progress: _Progress | None,
    tally: _Tally,
) -> None:
    """Write every file of ``stream``, counting them in ``tally``."""
    opened: pb.FileStatus | None = None
    for message in stream:
        if message.HasField("file"):
            if opened is not None:
                _end(writer, opened, progress, tally)
            opened = message.file.status
            writer.start(batch.batch_id, message.file)
        elif message.HasField("page") and opened is not None:
            writer.text(message.page.page_number, message.page.text)
            if progress is not None:
                progress.advance(chars=len(message.page.text))
    if opened is not None:
        _end(writer, opened, progress, tally)


def _end(writer: _Writer, status: pb.FileStatus, progress: _Progress | None, tally: _Tally) -> None:
    writer.end()
    tally.states[file_state_name(status.state)] += 1
    tally.last_whole = status.file_id
    if progress is not None:
        progress.advance(files=1)


def export(client: Client, batch_id: str, output: str, after: str | None) -> int:
    """``pdfbatch export``: write the batch to ``output`` (see the module); exit code 0.

    Raises:
        ExportTargetError: ``output`` names no target.
        grpc.RpcError: The service refused the export or the connection broke; a file
            target keeps its ``.partial`` file to resume from.
        OSError: The target cannot be written.
    """
    kind = target_kind(output)
    if kind == "stdout":
        return _to_stdout(client, batch_id, after or "")
    directory = Path(output) if kind == "directory" else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / _INDEX
    else:
        final = Path(output)
    return _to_file(client, batch_id, after, final, directory)


def _to_stdout(client: Client, batch_id: str, after: str) -> int:
    """JSON Lines on standard output (escaped for a terminal if it is one)."""
    tally = _Tally()
    shown = terminal_safe if sys.stdout.isatty() else str
    batch, stream = _messages(client, batch_id, after)
    _warn_unsettled(batch)
    writer = _JsonLines(lambda text: sys.stdout.write(shown(text)))
    try:
        _pump(batch, stream, writer, None, tally)
    except BrokenPipeError:
        raise  # the reader had what it wanted: nothing to go on with
    except Exception:
        if tally.last_whole:
            sys.stdout.flush()
            print(
                f"pdfbatch export: stopped after file {tally.last_whole}: go on with "
                f"--after {tally.last_whole}.",
                file=sys.stderr,
            )
        raise
    return 0


def _to_file(
    client: Client, batch_id: str, after: str | None, final: Path, directory: Path | None
) -> int:
    """Into ``final`` through its ``.partial`` (and the text files of ``directory``)."""
    tally = _Tally()
    partial = final.with_name(final.name + _PARTIAL)
    resumed = None if after is not None else _resume(partial, batch_id)
    start_after = after or (resumed[0] if resumed else "")
    batch, stream = _messages(client, batch_id, start_after)
    _warn_unsettled(batch)
    with ExitStack() as stack:
        handle = stack.enter_context(
            partial.open("a" if resumed else "w", encoding="utf-8", newline="")
        )
        target: _Writer
        if directory is not None:
            target = _Directory(directory, handle.write)
            stack.callback(target.close)
        else:
            target = _JsonLines(handle.write)
        progress = None
        if sys.stderr.isatty():
            progress = _Progress(sys.stderr, batch.file_count, resumed[1] if resumed else 0)
            stack.callback(progress.close)
        try:
            _pump(batch, stream, target, progress, tally)
        except BaseException:
            handle.flush()
            if progress is not None:
                progress.close()
            print(
                f"pdfbatch export: stopped; the files exported so far are in "
                f"{terminal_safe(str(partial))}: run the same command again to go on.",
                file=sys.stderr,
            )
            raise
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, final)
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(tally.states.items()))
    where = f"after {terminal_safe(start_after)} " if start_after else ""
    print(
        f"Exported {sum(tally.states.values())} files {where}of batch {batch.batch_id}"
        f"{f' ({counts})' if counts else ''} to {terminal_safe(str(final))}.",
        file=sys.stderr,
    )
    return 0


def _warn_unsettled(batch: pb.Batch) -> None:
    if batch.state not in _TERMINAL_STATES:
        print(
            f"pdfbatch export: batch {batch.batch_id} is {batch_state_name(batch.state)}: "
            "files not finished are exported without text; export again once it settles.",
            file=sys.stderr,
        )
