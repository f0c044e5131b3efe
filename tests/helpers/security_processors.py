"""Processors that worker processes import in the security tests."""

from __future__ import annotations

import json
import os
import resource
import stat
import tempfile

from actors.policy.model import DocumentInfo, ExtractionResult

FENCE = "tests.helpers.security_processors:fence"


def fence(data: bytes, password: str | None) -> ExtractionResult:
    """Report, as JSON in the only page, what fences the worker it runs in."""
    del data, password
    usage = resource.getrusage(resource.RUSAGE_SELF)
    umask = os.umask(0)
    os.umask(umask)
    handle, path = tempfile.mkstemp()
    os.close(handle)
    created = os.path.join(tempfile.gettempdir(), "plain-open.txt")
    with open(created, "w") as out:
        out.write("x")
    report = {
        "umask": umask,
        "core": resource.getrlimit(resource.RLIMIT_CORE),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "cpu_soft": resource.getrlimit(resource.RLIMIT_CPU)[0],
        "cpu_used": usage.ru_utime + usage.ru_stime,
        "temp_dir_mode": stat.S_IMODE(os.stat(tempfile.gettempdir()).st_mode),
        "mkstemp_mode": stat.S_IMODE(os.stat(path).st_mode),
        "open_mode": stat.S_IMODE(os.stat(created).st_mode),
        "niceness": os.nice(0),
        "cpus": sorted(os.sched_getaffinity(0)),
    }
    page = json.dumps(report)
    return ExtractionResult(page_count=1, encrypted=False, info=DocumentInfo(), pages=(page,))
