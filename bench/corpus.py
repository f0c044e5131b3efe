"""The files the scenarios feed the service: generated PDFs, or a directory of real ones.

Generated files come from :mod:`bench.samples`, so no scenario needs files from
elsewhere. A directory of real PDFs is replicated to the size asked for: each copy is
a separate upload under its own name (identical bytes are stored once by the service's
blob store, which is what it would do for a user too).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from bench.samples import report_pdf, text_pdf

__all__ = ["CorpusFile", "directory_corpus", "generated_corpus", "one_page_corpus", "write_copies"]

# Fixed, so that every run of the bench processes the same files in the same order.
_SEED = 7
_LINES = 50
_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "tempor")


@dataclass(frozen=True, slots=True)
class CorpusFile:
    """A file on disk and the name it is uploaded under."""

    path: Path
    name: str


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def generated_corpus(directory: Path, count: int) -> list[CorpusFile]:
    """``count`` distinct PDFs of 1 to 60 full pages of text, some with up to 200 KB attached.

    Page counts and sizes vary the way a mixed inbox does: most files short (a mean of
    8 pages), a few long.
    """
    rng = random.Random(_SEED)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        pages = min(60, 1 + int(rng.expovariate(1 / 7)))
        padding = rng.choice((0, 0, 0, 20_000, 200_000))
        texts = [
            [f"Document {index}, page {n}", *(_sentence(rng, 14) for _ in range(_LINES))]
            for n in range(1, pages + 1)
        ]
        path = directory / f"doc-{index:05d}.pdf"
        path.write_bytes(report_pdf(*texts, padding=padding))
        files.append(CorpusFile(path, path.name))
    return files


def one_page_corpus(directory: Path, count: int) -> list[CorpusFile]:
    """``count`` distinct one-page PDFs: the smallest real work a file can be."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        path = directory / f"page-{index:05d}.pdf"
        path.write_bytes(text_pdf(f"One page, number {index}"))
        files.append(CorpusFile(path, path.name))
    return files


def directory_corpus(directory: Path, count: int | None, copies: int = 3) -> list[CorpusFile]:
    """The ``*.pdf`` files under ``directory``, each repeated to make ``count`` uploads.

    Args:
        directory: Searched recursively.
        count: Uploads wanted. Default ``copies`` times the files found.
        copies: Repetitions of each file when ``count`` is not given.

    Raises:
        FileNotFoundError: ``directory`` holds no PDF.
    """
    found = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf")
    if not found:
        raise FileNotFoundError(f"no *.pdf under {directory}")
    wanted = count if count is not None else copies * len(found)
    repeated = found * math.ceil(wanted / len(found))
    files = [CorpusFile(path, f"{i:05d}-{path.name}") for i, path in enumerate(repeated[:wanted])]
    # The same shuffled order for the service and the baseline: where the one slow file
    # lands decides how long the last worker runs alone.
    random.Random(_SEED).shuffle(files)
    return files


def write_copies(directory: Path, data: bytes, count: int) -> list[CorpusFile]:
    """One file holding ``data``, uploaded ``count`` times under different names."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "file.pdf"
    path.write_bytes(data)
    return [CorpusFile(path, f"f{index:05d}.pdf") for index in range(count)]
