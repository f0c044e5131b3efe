"""Choosing the executor: the local worker pool, or Ray when there is a cluster to use.

Ray is an optional extra (``pip install 'pdfbatch[ray]'``); nothing here imports it
unless a Ray executor is asked for.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Literal

from actors.execution.contract import Executor
from actors.execution.extract import PdfLimits
from actors.execution.local.limits import ProcessLimits
from actors.execution.local.pool import DEFAULT_MEMORY_LIMIT_BYTES, DEFAULT_PROCESSOR, WorkerPool
from actors.policy.results import ResultLimits

__all__ = ["ExecutorKind", "make_executor", "ray_available"]

ExecutorKind = Literal["local", "ray", "auto"]


def ray_available() -> bool:
    """Whether the ``ray`` package can be imported."""
    return importlib.util.find_spec("ray") is not None


def make_executor(
    kind: ExecutorKind,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
    pdf_limits: PdfLimits | None = None,
    temp_root: Path | None = None,
    processor: str = DEFAULT_PROCESSOR,
    process_limits: ProcessLimits | None = None,
    result_limits: ResultLimits | None = None,
) -> Executor:
    """Build the executor the service runs its attempts on.

    Args:
        kind: ``"local"``: a :class:`~actors.execution.local.pool.WorkerPool`. ``"ray"``: a
            :class:`~actors.execution.ray.executor.RayExecutor`. ``"auto"``: Ray if it is
            installed and a cluster is named (``ray_address`` or ``RAY_ADDRESS``),
            else local.
        workers: Local: the number of worker processes. Ray: the CPUs of a
            single-machine Ray started here when no cluster is named; a cluster's size
            is its own. Default: one per CPU.
        ray_address: The Ray cluster to join (``"HOST:6379"`` or ``"auto"``), from a
            node of that cluster. Default ``RAY_ADDRESS``.
        memory_limit_bytes: Each worker's memory cap; see the executors. Default 2 GiB.
        pdf_limits: pypdf limits in the workers. Default ``PdfLimits()``.
        temp_root: Local only: where the workers' temporary directories go. Ray workers
            use their own node's temporary directory.
        processor: Import path of the processor. Default
            :func:`actors.execution.extract.extract_pdf`.
        process_limits: Local only: CPU time per attempt, open files and CPU priority
            of each worker.
        result_limits: How big one file's result may be. Default ``ResultLimits()``.

    Raises:
        ValueError: An unknown ``kind``, or what the executor refuses.
        ImportError: ``kind`` is ``"ray"`` and Ray is not installed.
        ConnectionError: No Ray cluster answered at the address.
    """
    if kind == "auto":
        addressed = ray_address is not None or bool(os.environ.get("RAY_ADDRESS"))
        kind = "ray" if addressed and ray_available() else "local"
    if kind == "local":
        return WorkerPool(
            workers=workers,
            processor=processor,
            memory_limit_bytes=memory_limit_bytes,
            pdf_limits=pdf_limits,
            process_limits=process_limits,
            result_limits=result_limits,
            temp_root=temp_root,
        )
    if kind == "ray":
        if not ray_available():
            raise ImportError("the Ray executor needs Ray: pip install 'pdfbatch[ray]'")
        from actors.execution.ray.executor import RayExecutor  # noqa: PLC0415 (an optional extra)

        return RayExecutor(
            address=ray_address,
            num_cpus=workers,
            processor=processor,
            memory_limit_bytes=memory_limit_bytes,
            pdf_limits=pdf_limits,
            result_limits=result_limits,
        )
    raise ValueError(f"unknown executor kind {kind!r}: choose 'local', 'ray' or 'auto'")
