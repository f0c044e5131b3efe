"""A local Ray instance for a test module, and runtimes that run their attempts on it.

``ray_instance`` starts one single-node Ray per module (two CPUs, loopback, no
dashboard): starting Ray takes seconds, so tests share it. While it is up, the per-test
leak check of ``tests.conftest`` leaves Ray's processes alone, since they belong to the
module; when the module ends, ``ray.shutdown()`` must take every one of them down, worker
processes included. The workers' ``TMPDIR`` is a directory of the module's own, where
their private temporary directories must hold no file at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from actors.execution.ray.executor import RayExecutor
from actors.orchestration.clock import FakeScheduler
from actors.orchestration.runtime import Runtime
from actors.storage.blobs import BlobStore
from actors.storage.store import MemoryStore
from tests import conftest
from tests.helpers.harness import Harness, Waiter
from tests.helpers.processors import SCRIPTED

RAY_CPUS = 2
SHUTDOWN_TIMEOUT = 15.0
WORKER_TEMP_PREFIX = "pdfbatch-ray-"


@dataclass(frozen=True)
class RayInstance:
    """The module's Ray.

    Attributes:
        node_id: Its only node.
        roots: The Ray processes the test process started (GCS, raylet...).
        worker_temp: The workers' ``TMPDIR``.
    """

    node_id: str
    roots: frozenset[int]
    worker_temp: Path


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayInstance]:
    """Start Ray for the module; at its end, check nothing of Ray is left."""
    assert not ray.is_initialized(), "another test left Ray running"
    worker_temp = tmp_path_factory.mktemp("ray-workers")
    me = psutil.Process()
    before = {child.pid for child in me.children()}
    ray.init(
        num_cpus=RAY_CPUS,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"TMPDIR": str(worker_temp)}},
    )
    roots = frozenset(child.pid for child in me.children()) - before
    conftest.exempt_process_roots.update(roots)
    try:
        yield RayInstance(ray.get_runtime_context().get_node_id(), roots, worker_temp)
    finally:
        tree = _tree(roots)
        ray.shutdown()
        conftest.exempt_process_roots.difference_update(roots)
        _, alive = psutil.wait_procs(tree, timeout=SHUTDOWN_TIMEOUT)
        left = [p.pid for p in alive if _running(p)]
        assert not left, f"Ray processes outlived ray.shutdown(): {left}"
        files = [str(f) for f in worker_temp.glob(f"{WORKER_TEMP_PREFIX}*/*")]
        assert not files, f"Ray workers left temporary files: {files}"


def build_ray_harness(tmp_path: Path, **options: Any) -> Iterator[Harness]:
    """Yield a runtime whose executor is a :class:`RayExecutor` on the module's Ray.

    ``options`` go to the executor; by default it runs the scripted processor with a
    1 GiB memory cap, as ``tests.helpers.harness.build_harness`` does with its pool. The
    harness's ``pool`` is the Ray executor.
    """
    clock = FakeScheduler()
    store = MemoryStore()
    blobs = BlobStore(tmp_path / "blobs")
    temp_root = tmp_path / "work"
    temp_root.mkdir()
    options.setdefault("processor", SCRIPTED)
    options.setdefault("memory_limit_bytes", 1 << 30)
    executor = RayExecutor(**options)
    runtime = Runtime(
        store=store, blobs=blobs, executor=executor, scheduler=clock, rand=lambda: 0.5
    )
    waiter = Waiter(store)
    try:
        yield Harness(runtime, clock, executor, store, blobs, waiter, temp_root)  # type: ignore[arg-type]
    finally:
        waiter.close()
        runtime.close()
        executor.close()
        clock.close()


def _tree(roots: frozenset[int]) -> list[psutil.Process]:
    processes = []
    for pid in roots:
        try:
            root = psutil.Process(pid)
            processes += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return processes


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
