"""The benchmark's smallest runs, so that ``python -m bench`` does not rot between uses.

Each test runs one scenario end to end at a size that takes seconds: real servers,
real worker processes, real gRPC. The numbers mean nothing at this size; what is
checked is that every scenario still measures what it says and leaves nothing behind
(the leak check of ``conftest`` runs after each test).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import psutil
import pytest

from bench.__main__ import main
from bench.cancel import cancel_latency
from bench.feed import feed
from bench.options import Options
from bench.processors import SCRIPTED
from bench.scale import scale
from bench.server_process import ServerProcess, chosen_settings
from bench.small_blobs import small_blobs
from bench.watch import watch_latency
from server.service.settings import ServerSettings

WORKERS = 2


def test_throughput_runs_the_same_files_through_the_bare_pool_and_the_service(
    tmp_path: Path,
) -> None:
    output = tmp_path / "results.json"
    code = main(
        ["--scenario", "throughput", "--files", "6", "--repeat", "1", "--json", str(output)]
    )
    assert code == 0
    figure, cpu, first = json.loads(output.read_text())["figures"]
    assert figure["scenario"] == "throughput"
    assert figure["value"] > 0
    outcomes = figure["detail"]["outcomes_last_pair"]
    assert outcomes["bare"] == {"succeeded": 6, "failed": 0}
    assert outcomes["service"]["succeeded"] == 6
    assert figure["target"] == ">= 0.95"
    assert isinstance(figure["passed"], bool)
    # The server's own CPU time per file, and when the first file succeeded.
    assert cpu["name"].startswith("server CPU per file")
    assert cpu["value"] == figure["detail"]["cpu_ms_per_file"]["server"][0] > 0
    # The bare pool's own control plane, measured in the same pair.
    assert figure["detail"]["cpu_ms_per_file"]["bare_parent"][0] > 0
    assert "bare pool's parent" in cpu["note"]
    assert first["name"].startswith("first file SUCCEEDED")
    assert 0 < first["value"] == figure["detail"]["first_result_seconds"][0] < 600


def test_cancel_latency_is_measured_on_every_run() -> None:
    p50, p99 = cancel_latency(Options(files=20, repeat=2, workers=WORKERS))
    latencies = p50.detail["latencies_ms"]
    assert len(latencies) == 2
    assert all(0 < ms < 60_000 for ms in latencies)
    assert p99.value == max(latencies)
    assert p99.target == "< 250"


def test_watch_latency_is_measured_for_every_watcher() -> None:
    single, coalesced = watch_latency(Options(files=30, workers=WORKERS))
    for figure in (single, coalesced):
        assert figure.detail["watchers"] == 50
        # Every live event reached every watcher that was connected by then, and the
        # files ran only once every watcher was: each file's end reached all 50.
        assert figure.detail["deliveries"] >= figure.detail["events"] > 0
        assert figure.detail["deliveries"] >= 50 * 30
        assert figure.value is not None
        assert not math.isnan(figure.value)
    # One message per event and watcher, and the snapshots; coalesced, never more.
    assert single.detail["messages"] == single.detail["deliveries"] + 50
    assert coalesced.detail["messages"] <= coalesced.detail["deliveries"] + 50


def test_feed_measures_the_service_alone_on_files_that_cost_nothing() -> None:
    # Enough files that the server's CPU over a run is many of the kernel's 10 ms ticks:
    # 40 took 8 ms or so, read as 0 now and then.
    rate, cpu = feed(Options(files=400, repeat=2, workers=1))
    assert cpu.detail["files"] == 400
    assert len(cpu.detail["rates"]) == len(cpu.detail["server_cpu_ms"]) == 2
    first, second = cpu.detail["rates"]
    assert rate.value == (first + second) / 2 > 0
    assert all(ms > 0 for ms in cpu.detail["server_cpu_ms"])
    assert cpu.target == "<= 0.25"


def test_small_blob_uploads_are_measured_both_ways() -> None:
    store, wire = small_blobs(Options(files=20, repeat=1, workers=1))
    for figure in (store, wire):
        runs = figure.detail["ms_per_file"]
        assert set(runs) == {"files", "rows"}
        assert all(len(ms) == 1 and 0 < ms[0] < 60_000 for ms in runs.values())
        assert figure.value == runs["rows"][0]


def test_scale_measures_every_answer_on_one_batch_in_flight() -> None:
    figures = scale(Options(files=300, workers=WORKERS))
    detail = figures[0].detail
    assert len(figures) == 8
    assert all(f.value is not None and f.value > 0 for f in figures)
    # Every file was waiting or running when cancelled, and every one was retried.
    assert detail["cancelled"] == 300
    assert detail["retried"] == 300
    assert detail["pages"] == 1
    assert detail["processing_s"] >= detail["serving_s"] > 0


def test_a_setting_chosen_on_the_command_line_reaches_every_service_and_nothing_else_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PDFBATCH_COMMIT_INTERVAL_SECONDS", "0.5")  # the caller's own
    variables = {"PDFBATCH_WORKER_NICENESS": "3"}
    with chosen_settings(variables):
        # In this process, as the watch scenario's service reads them.
        assert ServerSettings().worker_niceness == 3
        with ServerProcess(tmp_path / "data", workers=1, processor=SCRIPTED) as server:
            environment = psutil.Process(server.pid).environ()
    assert environment["PDFBATCH_WORKER_NICENESS"] == "3"
    assert "PDFBATCH_COMMIT_INTERVAL_SECONDS" not in environment
    assert "PDFBATCH_WORKER_NICENESS" not in os.environ
    assert ServerSettings().worker_niceness == 19


@pytest.mark.parametrize(
    ("argument", "said"),
    [
        ("worker_niceness", "expected NAME=VALUE"),
        ("nope=1", "no service setting is called 'nope'"),
        ("worker_niceness=44", "less than or equal to 19"),
    ],
)
def test_a_setting_the_service_would_refuse_is_refused_at_once(
    argument: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--setting", argument, "--scenario", "feed"])
    assert raised.value.code == 2
    assert said in capsys.readouterr().err
