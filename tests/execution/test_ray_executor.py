"""What only the Ray executor has, on a real single-node Ray: cancel waits for the
worker's process, limits apply inside Ray's workers, reaping on other nodes, the choice
of executor, the service on Ray.

The guarantees every executor gives (timeouts, cancel, crashes, the memory cap) are
tested once for all in ``tests/execution/test_contract.py``. One Ray instance serves the
module (``tests.helpers.ray_fixtures``).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

pytest.importorskip("ray", reason="the Ray executor needs the 'ray' extra")

from actors.execution.contract import AttemptFailure, AttemptSuccess
from actors.execution.extract import PdfLimits
from actors.execution.factory import make_executor
from actors.execution.local.pool import WorkerPool
from actors.execution.ray.executor import RayExecutor
from actors.execution.ray.processes import BUSY_MARKER, WorkerLocation, reap_on_nodes
from actors.policy.catalogue import ErrorCode
from actors.policy.sealed import unseal
from bench.samples import not_a_pdf, text_pdf
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from tests.helpers.pool_fixtures import Recorder
from tests.helpers.processes import process_gone
from tests.helpers.processors import SCRIPTED
from tests.helpers.ray_fixtures import RayInstance
from tests.helpers.server_fixtures import ServerFactory

Blob = Callable[[bytes], str]


@pytest.fixture
def executors(ray_instance: RayInstance) -> Iterator[Callable[..., RayExecutor]]:
    """Make Ray executors running the scripted processor; close them after the test."""
    made: list[RayExecutor] = []

    def make(**options: object) -> RayExecutor:
        options.setdefault("processor", SCRIPTED)
        made.append(RayExecutor(**options))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for executor in made:
        executor.close()


def test_cancel_returns_once_the_worker_is_gone_and_reports_once(
    executors: Callable[..., RayExecutor], blob: Blob
) -> None:
    executor = executors()
    recorder = Recorder()
    handle = recorder.submit(executor, "a", blob(b"hang"))  # type: ignore[arg-type]
    pid = recorder.started("a")
    assert pid is not None
    assert not process_gone(pid)
    handle.cancel(ErrorCode.PROCESSING_TIMEOUT)
    assert process_gone(pid)
    outcome = recorder.done_now("a")
    assert outcome == AttemptFailure(ErrorCode.PROCESSING_TIMEOUT, pid)
    handle.cancel(ErrorCode.CANCELLED)
    assert recorder.events["a"] == [("started", pid), ("done", outcome)]


def test_races_between_answers_and_cancels_report_each_attempt_once(
    executors: Callable[..., RayExecutor], blob: Blob
) -> None:
    executor = executors()
    recorder = Recorder()
    keys = [str(i) for i in range(12)]
    handles = [
        recorder.submit(executor, k, blob(f"sleep:{int(k) % 4 * 0.05}".encode())) for k in keys
    ]  # type: ignore[arg-type]
    cancels = [
        threading.Thread(target=handles[i].cancel, args=(ErrorCode.CANCELLED,))
        for i in range(0, len(keys), 2)
    ]
    for thread in cancels:
        thread.start()
    executor.cancel_batch("batch", ErrorCode.CANCELLED)
    for thread in cancels:
        thread.join()
    for key in keys:
        recorder.done(key)
    assert set(recorder.done_counts().values()) == {1}
    for events in recorder.events.values():
        assert events[-1][0] == "done"
        assert [kind for kind, _ in events].count("started") <= 1


def test_pdf_limits_memory_cap_and_temp_dir_apply_in_ray_workers(
    executors: Callable[..., RayExecutor], blob: Blob, ray_instance: RayInstance
) -> None:
    capped = executors(
        memory_limit_bytes=512 << 20, pdf_limits=PdfLimits(max_decompressed_stream_length=1234)
    )
    recorder = Recorder()
    recorder.submit(capped, "env", blob(b"environment"))  # type: ignore[arg-type]
    recorder.submit(capped, "temp", blob(b"tempfile"))  # type: ignore[arg-type]
    recorder.submit(capped, "password", blob(b"password"), password="s3cret")  # type: ignore[arg-type]
    environment = json.loads(_pages(recorder.done("env"))[0])
    pid = recorder.started("env")
    assert pid is not None
    own_maps = psutil.Process(pid).memory_info().vms
    assert environment["zlib_maximum_output_length"] == 1234
    assert environment["jbig2dec_binary"] is None
    assert environment["pypdf_log_level"] == 40
    assert Path(environment["tempdir"]).parent == ray_instance.worker_temp
    # The cap is what the worker maps for itself (GBs) plus 512 MiB.
    assert 0 < environment["rlimit_as"] - own_maps <= (512 + 256) << 20
    created, tmpdir = _pages(recorder.done("temp"))
    assert Path(created).parent == Path(tmpdir)
    assert not Path(created).exists()
    assert _pages(recorder.done("password")) == ("'s3cret'",)

    # The cap outlives the task in its process; the next attempt sets its own.
    uncapped = executors(memory_limit_bytes=None)
    for key in ("again-1", "again-2"):
        recorder.submit(uncapped, key, blob(b"environment"))  # type: ignore[arg-type]
        assert json.loads(_pages(recorder.done(key))[0])["rlimit_as"] == -1


def test_unreadable_blob_fails_without_reaching_ray(executors: Callable[..., RayExecutor]) -> None:
    recorder = Recorder()
    recorder.submit(executors(), "gone", "/nonexistent/blob")  # type: ignore[arg-type]
    outcome = recorder.done("gone")
    assert isinstance(outcome, AttemptFailure)
    assert outcome.code is ErrorCode.STORAGE_UNAVAILABLE
    assert recorder.events["gone"] == [("done", outcome)]


def test_close_cancels_what_runs_and_refuses_more(
    executors: Callable[..., RayExecutor], blob: Blob
) -> None:
    executor = executors()
    recorder = Recorder()
    recorder.submit(executor, "hung", blob(b"hang"))  # type: ignore[arg-type]
    pid = recorder.started("hung")
    executor.close()
    assert recorder.done_now("hung") == AttemptFailure(ErrorCode.CANCELLED, pid)
    assert pid is not None
    assert process_gone(pid)
    with pytest.raises(RuntimeError, match="closed"):
        recorder.submit(executor, "late", blob(b"ok"))  # type: ignore[arg-type]


def test_reap_on_nodes_waits_on_the_process_node(ray_instance: RayInstance, tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    temp_dir = tmp_path / "worker-temp"
    temp_dir.mkdir()
    (temp_dir / BUSY_MARKER).write_text("task-1")
    where = WorkerLocation(
        ray_instance.node_id, sleeper.pid, _start_ticks(sleeper.pid), str(temp_dir), "task-1"
    )
    try:
        assert reap_on_nodes([where], timeout=0.5) == [where], "a live process is reported"
        assert temp_dir.exists()
        (temp_dir / BUSY_MARKER).write_text("task-2")
        assert reap_on_nodes([where], timeout=30) == [], "it finished task-1: nothing runs"
        assert temp_dir.exists(), "a worker that lives on keeps its directory"
        (temp_dir / BUSY_MARKER).write_text("task-1")
        threading.Timer(0.3, sleeper.kill).start()
        assert reap_on_nodes([where]) == []
        assert not temp_dir.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    lost_node = WorkerLocation("ab" * 28, 1, 1, "/nonexistent", "task-1")
    assert reap_on_nodes([lost_node]) == [], "a dead node took its processes with it"


def test_make_executor_picks_ray_only_when_asked_or_addressed(
    ray_instance: RayInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    options = {"workers": 1, "processor": SCRIPTED, "temp_root": tmp_path}
    for kind, address, expected in [
        ("local", None, WorkerPool),
        ("auto", None, WorkerPool),
        ("auto", "auto", RayExecutor),
        ("ray", None, RayExecutor),
    ]:
        executor = make_executor(kind, ray_address=address, **options)  # type: ignore[arg-type]
        executor.close()
        assert type(executor) is expected, (kind, address)
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    executor = make_executor("auto", **options)  # type: ignore[arg-type]
    executor.close()
    assert isinstance(executor, RayExecutor)
    with pytest.raises(ValueError, match="executor kind"):
        make_executor("spark", **options)  # type: ignore[arg-type]


def _pages(outcome: object) -> tuple[str, ...]:
    assert isinstance(outcome, AttemptSuccess), outcome
    return unseal(outcome.result).pages


def _start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


def test_the_service_runs_on_ray_when_asked(
    ray_instance: RayInstance,
    serve: ServerFactory,
) -> None:
    server = serve(executor="ray")
    assert isinstance(server.service.pool, RayExecutor)
    batch = server.submit(("good.pdf", text_pdf("on ray")), ("notes.pdf", not_a_pdf()))
    server.settle(batch.batch_id)
    stored = server.stub.GetBatch(
        pb.GetBatchRequest(batch_id=batch.batch_id, view=pb.BATCH_VIEW_FULL), timeout=60
    )
    assert stored.state == pb.BATCH_STATE_PARTIALLY_SUCCEEDED
    assert [(f.name, f.error.code) for f in stored.files] == [
        ("good.pdf", ""),
        ("notes.pdf", "NOT_A_PDF"),
    ]


def test_admission_takes_turns_across_tenants_and_a_waiting_cancel_costs_no_task(
    executors: Callable[..., RayExecutor], blob: Blob, tmp_path: Path
) -> None:
    executor = executors(max_in_flight=1)
    recorder = Recorder()
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    recorder.submit(executor, "gate", blob(b"gate:" + str(gate).encode()), tenant="b", batch="big")  # type: ignore[arg-type]
    recorder.started("gate")
    big = [f"big-{index}" for index in range(4)]
    for key in big:
        recorder.submit(executor, key, blob(b"pid"), tenant="b", batch="big")  # type: ignore[arg-type]
    dropped = recorder.submit(executor, "dropped", blob(b"pid"), tenant="b", batch="big")  # type: ignore[arg-type]
    recorder.submit(executor, "small", blob(b"pid"), tenant="a", batch="small")  # type: ignore[arg-type]

    dropped.cancel(ErrorCode.CANCELLED)
    gate.write_text("open")

    assert recorder.done_now("dropped") == AttemptFailure(ErrorCode.CANCELLED, None)
    for key in [*big, "small"]:
        assert isinstance(recorder.done(key), AttemptSuccess)
    after_gate = recorder.start_order[1:]
    # First come, first served would start it last; turns start it second.
    assert after_gate.index("small") == 1
    assert "dropped" not in recorder.start_order
