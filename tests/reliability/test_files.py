"""Hostile and real files: the real corpus and generated malformed PDFs in one batch.

A real ``pdfbatch serve`` child runs the real extractor in fenced workers. Every PDF of
``../shared/corpus`` (when it is there), damaged copies of some of them, the generated
malformed and hostile files of ``tests/helpers/malformed_pdfs.py`` and the poison results of
``tests/helpers/poison_pdfs.py`` go through it in ONE batch. Every file must end terminal; every
failure must carry a catalogue code other than ``INTERNAL`` (the code each generated
file must get, where only one is right); every poison file must succeed at its first
attempt, its result readable; no attempt may run past its time limit; no worker may
leave a file behind; and the service's memory must stay under 400 MB throughout, a
text of 60 million characters included.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from actors.policy.catalogue import CATALOGUE, ErrorCode
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from tests.helpers.crash_fixtures import ServerProcess
from tests.helpers.malformed_pdfs import CORPUS, corpus_pdfs, generated, mutated_corpus
from tests.helpers.poison_pdfs import poison_files
from tests.helpers.processes import eventually
from tests.helpers.reliability import REPORT
from tests.helpers.reliability_checks import (
    Ledger,
    check_batches,
    check_history_safe,
    check_no_temp_files,
    seeded,
    server_workers,
)
from tests.helpers.reliability_fixtures import Launch, RssGauge

# Above the slowest real file (about 3 s of CPU), far below the CPU bomb's minutes.
CPU_LIMIT_SECONDS = 6
FILE_TIMEOUT_SECONDS = 30
# What stopping an attempt at its limit may take beyond it: the kill, the commit.
STOP_ALLOWANCE_SECONDS = 5.0
EXTRACTOR = "actors.execution.extract:extract_pdf"
# What the issue that bounded results asked of the service with a 60-million-character text.
MAX_RSS_MB = 400
WORKERS = 2


def run_files(launch: Launch, rng: random.Random, *, damaged_copies: int, rounds: int) -> None:
    """Send the corpus, its damaged copies and the generated files, ``rounds`` batches."""
    corpus = corpus_pdfs()
    if not corpus:
        pytest.skip(f"no corpus at {CORPUS}")
    launcher = launch(processor=EXTRACTOR, cpu_limit_seconds=CPU_LIMIT_SECONDS)
    life = launcher.start()
    gauge = RssGauge(life.process.pid)
    ledger = Ledger()
    outcomes: Counter[str] = Counter()
    began = time.monotonic()
    sent = 0
    for round_number in range(rounds):
        files = [
            *((f"corpus-{path.name}", path.read_bytes(), None) for path in corpus),
            *mutated_corpus(corpus, rng, damaged_copies),
            *generated(rng),
            *((name, data, None) for name, data in poison_files()),
        ]
        rng.shuffle(files)
        expected = {name: code for name, _, code in files}
        assert len(expected) == len(files), "file names must be unique"
        batch = ledger.submit(
            life.stub,
            f"files-{round_number}",
            [(name, data) for name, data, _ in files],
            policy=pb.BatchPolicy(
                max_concurrency=4,
                file_timeout={"seconds": FILE_TIMEOUT_SECONDS},  # type: ignore[arg-type]
                retry=pb.RetryPolicy(max_attempts=2, initial_backoff={"nanos": 50_000_000}),  # type: ignore[arg-type]
            ),
        )
        for _ in life.stub.WatchBatch(pb.WatchBatchRequest(batch_id=batch.batch_id), timeout=600):
            pass
        final = check_batches(life.stub, ledger)[batch.batch_id]
        _check_outcomes(final, expected)
        _check_poison(final)
        _check_time_limits(final)
        _check_results(life, final)
        check_history_safe(life.stub, final)
        check_no_temp_files(launcher.data_dir, stopped=False)
        outcomes.update(f.error.code or "SUCCEEDED" for f in final.files)
        sent += len(files)

    eventually(lambda: len(server_workers(life.process.pid)) == WORKERS)
    REPORT.invariant("pool back to full strength")
    gauge.close()
    peak_mb = gauge.peak / 1e6
    REPORT.figure("service peak RSS, hostile and poison files", peak_mb, "MB")
    assert peak_mb < MAX_RSS_MB, f"the service's RSS peaked at {peak_mb:.0f} MB"
    REPORT.invariant("service memory bounded by poison results")
    life.stop()
    check_no_temp_files(launcher.data_dir, stopped=True)
    REPORT.attack("hostile and real files", sent)
    REPORT.attack("poison results", len(poison_files()) * rounds)
    for code, count in outcomes.items():
        if code != "SUCCEEDED":
            REPORT.fault(f"file failed as {code}, batch unharmed", count)
    print(
        f"{sent} files ({len(corpus)} real per round) in {rounds} batches, "
        f"{time.monotonic() - began:.1f} s: {dict(outcomes.most_common())}"
    )


def _check_outcomes(batch: pb.Batch, expected: dict[str, ErrorCode | None]) -> None:
    """Each generated file that can end only one way ends that way, after one attempt."""
    checked = 0
    for file in batch.files:
        if "libreoffice-writer-password" in file.name and file.name.startswith("corpus-"):
            assert file.error.code == ErrorCode.PDF_ENCRYPTED, file.name
        code = expected[file.name]
        if code is None:
            continue
        assert (file.state, file.error.code) == (pb.FILE_STATE_FAILED, code.value), file.name
        assert file.error.message == CATALOGUE[code].message, file.name
        assert file.attempt_count == 1, f"{file.name}: {code} must not be retried"
        checked += 1
    REPORT.invariant("hostile files fail with their own code", checked)


def _check_poison(batch: pb.Batch) -> None:
    """Each poison file succeeded at its first attempt: its result was made fit to keep."""
    poison = [f for f in batch.files if f.name.startswith("poison-")]
    assert len(poison) == len(poison_files())
    for file in poison:
        assert (file.state, file.attempt_count) == (pb.FILE_STATE_SUCCEEDED, 1), file.name
    REPORT.invariant("poison results stored and sent, their batch unharmed", len(poison))


def _check_time_limits(batch: pb.Batch) -> None:
    """No attempt ran longer than the batch's file timeout (and the time to stop it)."""
    longest = 0.0
    for file in batch.files:
        for attempt in file.attempts:
            seconds = (attempt.end_time.ToNanoseconds() - attempt.start_time.ToNanoseconds()) / 1e9
            assert 0 <= seconds <= FILE_TIMEOUT_SECONDS + STOP_ALLOWANCE_SECONDS, (
                file.name,
                attempt.number,
                seconds,
            )
            longest = max(longest, seconds)
    REPORT.invariant("no attempt beyond its time limit", len(batch.files))
    print(f"longest attempt: {longest:.2f} s")


def _check_results(life: ServerProcess, batch: pb.Batch) -> None:
    """Every file that succeeded has its text: one page of result per page counted.

    A damaged file may be read as a document of no pages; an intact real one may not.
    """
    for file in batch.files:
        if file.state == pb.FILE_STATE_SUCCEEDED:
            result = life.client.result(batch.batch_id, file.file_id)
            assert result.metadata.page_count == len(result.pages), file.name
            if file.name.startswith("corpus-"):
                assert result.pages, f"{file.name}: a real file read as no pages"
    REPORT.invariant("every success has its text", len(batch.files))


def test_corpus_and_malformed_files_in_one_batch(launch: Launch) -> None:
    run_files(launch, seeded("files"), damaged_copies=12, rounds=1)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_soak_corpus_and_malformed_files(launch: Launch) -> None:
    run_files(launch, seeded("files, soak"), damaged_copies=300, rounds=3)
