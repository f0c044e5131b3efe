"""Process faults: SIGKILL of workers, and of the whole service, at random moments.

Both attacks run on a real ``pdfbatch serve`` child whose workers run scripted files
(sleeps, successes, permanent failures, files that crash their worker once). A seeded
generator picks the files, the moments and the victims; its seed is printed, and
``PDFBATCH_SEED=<seed>`` replays a run's choices. After every attack the invariants
of ``tests/helpers/reliability_checks.py`` must hold.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from server.gen.pdfbatch.v1 import batch_pb2 as pb
from tests.helpers.crash_fixtures import ServerProcess
from tests.helpers.crash_processors import script
from tests.helpers.processes import eventually
from tests.helpers.reliability import REPORT
from tests.helpers.reliability_checks import (
    TERMINAL_FILE,
    Ledger,
    check_batches,
    check_history_safe,
    check_no_temp_files,
    check_sequences_continue,
    seeded,
    server_workers,
)
from tests.helpers.reliability_fixtures import Launch

WORKERS = 2
WAIT = 60.0
CRASHED = "WORKER_CRASHED"
# Small, so that retries come quickly; no assertion here depends on how long they take.
BACKOFF = {"initial_backoff": {"nanos": 20_000_000}, "max_backoff": {"nanos": 200_000_000}}
MAX_BACKOFF_SECONDS = 0.2


def scripted_files(rng: random.Random, count: int, prefix: str) -> list[tuple[str, bytes]]:
    """``count`` files of a mix: mostly sleeps, some instant, broken or crashing ones.

    The name says what each does: ``sleep``, ``ok``, ``broken`` (fails with
    ``PDF_MALFORMED`` at once), ``crashes`` (its worker dies on the first attempt).
    """
    files = []
    for index in range(count):
        kind = rng.choices(["sleep", "ok", "broken", "crashes"], weights=[6, 2, 1, 1])[0]
        command = {
            "sleep": f"sleep:{rng.uniform(0.05, 0.4):.3f}",
            "ok": "ok",
            "broken": "pdf-error",
            "crashes": "crash-until:2",
        }[kind]
        files.append((f"{prefix}-{index:04d}-{kind}.pdf", script(command.encode())))
    return files


def policy(max_attempts: int) -> pb.BatchPolicy:
    """Quick retries, and no restart intensity to stop a batch that the test attacks."""
    return pb.BatchPolicy(
        max_concurrency=4,
        retry=pb.RetryPolicy(max_attempts=max_attempts, **BACKOFF),  # type: ignore[arg-type]
        restart_intensity=pb.RestartIntensity(max_restarts=100_000),
    )


def settle(life: ServerProcess, batch_id: str) -> pb.Batch:
    """Follow the batch until it is terminal (the stream ends then); return it."""
    for _ in life.stub.WatchBatch(pb.WatchBatchRequest(batch_id=batch_id), timeout=WAIT * 4):
        pass
    batch: pb.Batch = life.stub.GetBatch(
        pb.GetBatchRequest(batch_id=batch_id, view=pb.BATCH_VIEW_FULL), timeout=WAIT
    )
    return batch


# --- SIGKILL of worker processes -------------------------------------------------------


def kill_workers(
    launch: Launch,
    rng: random.Random,
    *,
    files: int,
    kills: int,
    pauses: tuple[float, float] = (0.02, 0.3),
) -> None:
    """Kill ``kills`` workers while one batch of ``files`` runs, ``pauses`` seconds apart."""
    launcher = launch()
    life = launcher.start()
    ledger = Ledger()
    server_pid = life.process.pid
    began = time.monotonic()
    batch = ledger.submit(
        life.stub, "worker-kills", scripted_files(rng, files, "w"), policy=policy(kills + 2)
    )
    killed: list[int] = []
    pause = threading.Event()
    while len(killed) < kills:
        pause.wait(rng.uniform(*pauses))
        now = life.stub.GetBatch(
            pb.GetBatchRequest(batch_id=batch.batch_id, view=pb.BATCH_VIEW_FULL), timeout=WAIT
        )
        if all(f.state in TERMINAL_FILE for f in now.files):
            break
        # Sorted, so that a seed picks the same worker by rank in every replay.
        workers = sorted(p.pid for p in server_workers(server_pid))
        if workers:
            victim = rng.choice(workers)
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
    final = settle(life, batch.batch_id)
    elapsed = time.monotonic() - began

    check_batches(life.stub, ledger)
    crashed_by_us = _check_restarted(final, set(killed), max_attempts=kills + 2)
    # Nothing failed for good because of the kills: each file ended as its script says.
    for file in final.files:
        expected = pb.FILE_STATE_FAILED if "broken" in file.name else pb.FILE_STATE_SUCCEEDED
        assert file.state == expected, (file.name, file.state, file.error.code)
        if "broken" in file.name:
            assert file.error.code == "PDF_MALFORMED"
    assert crashed_by_us >= 1, f"none of {len(killed)} kills hit an attempt"
    check_history_safe(life.stub, final)

    def full_strength() -> bool:
        alive = {p.pid for p in server_workers(server_pid)}
        return len(alive) == WORKERS and not alive & set(killed)

    eventually(full_strength)
    REPORT.invariant("pool back to full strength")
    check_no_temp_files(launcher.data_dir, stopped=False)
    life.stop()
    check_no_temp_files(launcher.data_dir, stopped=True)
    REPORT.attack("SIGKILL worker", len(killed))
    REPORT.fault("worker killed mid-attempt", crashed_by_us)
    print(
        f"{len(killed)} workers killed, {crashed_by_us} mid-attempt, "
        f"{files} files settled in {elapsed:.1f} s"
    )


def _check_restarted(batch: pb.Batch, killed: set[int], *, max_attempts: int) -> int:
    """Each crashed attempt was ours (or its script's) and was retried after its backoff.

    Returns how many attempts our kills cut short.
    """
    ours = 0
    for file in batch.files:
        attempts = list(file.attempts)
        assert file.attempt_count == len(attempts) <= max_attempts, file.name
        for attempt, after in zip(attempts, [*attempts[1:], None], strict=True):
            if attempt.code != CRASHED:
                continue
            scripted_crash = "crashes" in file.name and attempt.number == 1
            assert scripted_crash or attempt.worker_pid in killed, (
                f"{file.name}: attempt {attempt.number} crashed on {attempt.worker_pid}, "
                "which nobody killed"
            )
            ours += attempt.worker_pid in killed
            assert after is not None, f"{file.name}: a crashed attempt was not restarted"
            delay = attempt.retry_delay.ToTimedelta().total_seconds()
            assert 0 <= delay <= MAX_BACKOFF_SECONDS, (file.name, delay)
            next_start = after.start_time.ToNanoseconds() / 1e9
            crashed_at = attempt.end_time.ToNanoseconds() / 1e9
            assert next_start >= crashed_at + delay - 0.01, f"{file.name}: backoff cut short"
        if any(a.code == CRASHED for a in attempts):
            assert file.attempt_count > 1
    REPORT.invariant("killed attempts restarted after their backoff", ours)
    return ours


def test_sigkill_of_workers_at_random_moments(launch: Launch) -> None:
    kill_workers(launch, seeded("worker kills"), files=40, kills=8)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak_sigkill_of_workers_at_random_moments(launch: Launch) -> None:
    kill_workers(launch, seeded("worker kills, soak"), files=600, kills=98, pauses=(0.1, 1.0))


# --- SIGKILL of the service ------------------------------------------------------------


@dataclass
class Submitter:
    """Submits batches one after another on a thread until the service dies under it."""

    life: ServerProcess
    ledger: Ledger
    rng: random.Random
    prefix: str
    max_batches: int
    cut_off: list[grpc.StatusCode] = field(default_factory=list)
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="test-submitter")
        self._thread.start()

    def _run(self) -> None:
        pause = threading.Event()
        for number in range(self.max_batches):
            name = f"{self.prefix}-{number}"
            files = scripted_files(self.rng, self.rng.randint(1, 8), name)
            try:
                self.ledger.submit(self.life.stub, name, files, policy=policy(max_attempts=5))
            except grpc.RpcError as error:
                self.cut_off.append(error.code())
                return
            pause.wait(self.rng.uniform(0, 0.2))

    def join(self) -> None:
        self._thread.join(WAIT)
        assert not self._thread.is_alive()


def kill_service(launch: Launch, rng: random.Random, *, kills: int, batches_per_life: int) -> None:
    """Kill the service ``kills`` times at random moments while batches come in and run."""
    launcher = launch(max_active_batches=100_000, submission_burst=100_000)
    ledger = Ledger()
    left_behind: list[Path] = []
    began = time.monotonic()
    cut_off: list[grpc.StatusCode] = []
    for life_number in range(kills):
        life = launcher.start()
        _check_restart(life, ledger, left_behind)
        submitter = Submitter(
            life, ledger, random.Random(rng.getrandbits(64)), f"life{life_number}", batches_per_life
        )
        threading.Event().wait(rng.uniform(0.05, 2.0))
        left_behind += _temporary_files(launcher.data_dir)
        life.kill()
        submitter.join()
        cut_off += submitter.cut_off

    life = launcher.start()
    _check_restart(life, ledger, left_behind)
    for batch_id in ledger.accepted:
        settle(life, batch_id)
    batches = check_batches(life.stub, ledger)
    for batch_id, batch in batches.items():
        # Every event from the second on, across every life: none lost, none repeated.
        check_sequences_continue(life.stub, batch_id, 1, batch.sequence)
        for file in batch.files:
            expected = pb.FILE_STATE_FAILED if "broken" in file.name else pb.FILE_STATE_SUCCEEDED
            assert file.state == expected, (batch.display_name, file.name, file.error.code)
    for batch in list(batches.values())[:: max(1, len(batches) // 5)]:
        check_history_safe(life.stub, batch)
    life.stop()
    check_no_temp_files(launcher.data_dir, stopped=True)
    elapsed = time.monotonic() - began

    assert cut_off == [grpc.StatusCode.UNAVAILABLE] * len(cut_off), cut_off
    REPORT.attack("SIGKILL service", kills)
    REPORT.fault("service killed with batches in flight", kills)
    if cut_off:
        REPORT.fault("upload cut off by a kill", len(cut_off))
    files = sum(len(b.files) for b in batches.values())
    print(
        f"{kills} service kills in {elapsed:.1f} s: {len(ledger.accepted)} batches acknowledged "
        f"({len(batches) - len(ledger.accepted)} more whose answer was lost), {files} files, "
        f"{len(cut_off)} uploads cut off"
    )


def _check_restart(life: ServerProcess, ledger: Ledger, left_behind: list[Path]) -> None:
    """After a restart: everything acknowledged is there, and the crash's debris is gone."""
    check_batches(life.stub, ledger, settled=False)
    swept = [path for path in left_behind if path.exists()]
    assert swept == [], f"left by a kill and not swept at restart: {swept}"
    if left_behind:
        REPORT.invariant("temp files of a killed service swept at restart")


def _temporary_files(data_dir: Path) -> list[Path]:
    """Worker directories and half-written uploads a kill now would leave."""
    return [*(data_dir / "work").iterdir(), *(data_dir / "blobs").rglob(".incoming-*")]


def test_sigkill_of_the_service_at_random_moments(launch: Launch) -> None:
    kill_service(launch, seeded("service kills"), kills=4, batches_per_life=8)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak_sigkill_of_the_service_at_random_moments(launch: Launch) -> None:
    kill_service(launch, seeded("service kills, soak"), kills=60, batches_per_life=6)
