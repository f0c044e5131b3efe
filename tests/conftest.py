"""Fixtures shared by every test: nothing may outlive a test.

After each test every actor is stopped, and the test fails if a thread, a child
process or a file in its temp directory is left behind.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Iterator

import psutil
import pykka
import pytest

# The helpers check with plain asserts: rewritten, their failures say what differed.
pytest.register_assert_rewrite("tests.helpers")

from tests.helpers.reliability import REPORT  # noqa: E402 (after the rewrite is registered)

# The shared fixtures, for every test: none is imported by name into a test module.
pytest_plugins = [
    "tests.helpers.server_fixtures",
    "tests.helpers.pool_fixtures",
    "tests.helpers.crash_fixtures",
    "tests.helpers.reliability_fixtures",
    "tests.helpers.security_fixtures",
]
# Ray is an optional extra: without it, its tests skip and its fixtures are not loaded.
if importlib.util.find_spec("ray") is not None:
    pytest_plugins.append("tests.helpers.ray_fixtures")

_GRACE_SECONDS = 5.0

# A local Ray started by a test module binds to loopback only with this setting (despite
# its name), and must not report usage. Both are read when ray is imported or started.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Roots of process trees a module-scoped fixture keeps up on purpose (a local Ray): the
# per-test check leaves them and everything below them alone, and that fixture checks
# they are all gone when it takes them down.
exempt_process_roots: set[int] = set()


def _stray_threads(before: set[int]) -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.ident not in before
        and t is not threading.current_thread()
        and t.is_alive()
        and not _grpc_aio_poller(t)
    ]


def _grpc_aio_poller(thread: threading.Thread) -> bool:
    # grpc.aio's completion queue is one per process, polled by one thread of its own
    # for as long as any grpc.aio object lives (the first server starts it).
    return thread.name.endswith("(_poll_wrapper)")


def _stray_children() -> list[psutil.Process]:
    me = psutil.Process()
    # multiprocessing's fork server and resource tracker live for the whole session;
    # the workers forked from the server share its command line, so only the server
    # itself (a direct child) is exempt, never what it forked.
    services = {
        c.pid
        for c in me.children()
        if any("forkserver" in part or "resource_tracker" in part for part in _cmdline(c))
    }
    return [
        c
        for c in me.children(recursive=True)
        if c.pid not in services and not _exempt(c) and _alive(c)
    ]


def _exempt(process: psutil.Process) -> bool:
    try:
        return any(p.pid in exempt_process_roots for p in (process, *process.parents()))
    except psutil.Error:
        return False


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Stop stray actors, then fail on any thread or child process the test left."""
    before = {t.ident for t in threading.enumerate() if t.ident is not None}
    yield
    actors = pykka.ActorRegistry.get_all()
    pykka.ActorRegistry.stop_all(block=True, timeout=_GRACE_SECONDS)
    deadline = time.monotonic() + _GRACE_SECONDS
    threads = _stray_threads(before)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    # Child processes reaped by their owner may take a moment to disappear.
    while _stray_children() and time.monotonic() < deadline:
        time.sleep(0.02)
    leaked_threads = [t.name for t in _stray_threads(before)]
    leaked_children = [c.pid for c in _stray_children()]
    assert not actors, f"actors left running: {actors}"
    assert not leaked_threads, f"threads left running: {leaked_threads}"
    assert not leaked_children, f"child processes left running: {leaked_children}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip soak tests unless the marker expression names them (``pytest -m soak``)."""
    if "soak" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="soak run: select with -m soak")
    for item in items:
        if item.get_closest_marker("soak"):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what the reliability suite did, if any of it ran."""
    if REPORT.empty():
        return
    terminalreporter.section("reliability report")
    for line in REPORT.lines():
        terminalreporter.write_line(line)
