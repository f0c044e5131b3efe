"""The reliability suite's own checks catch what they are meant to catch."""

from __future__ import annotations

import pytest

from actors.policy.catalogue import CATALOGUE
from tests.helpers.reliability import ReliabilityReport
from tests.helpers.reliability_checks import check_safe_text


@pytest.mark.parametrize(
    "text",
    [
        'Traceback (most recent call last):\n  File "x", line 3, in f',
        "could not open /srv/data/blobs/ab/cdef",
        "failed in worker_main.py",
        "object at 0x7f28cf5f8220",
        "x" * 301,
    ],
)
def test_unsafe_messages_are_caught(text: str) -> None:
    with pytest.raises(AssertionError):
        check_safe_text(text)


@pytest.mark.parametrize("spec", list(CATALOGUE.values()), ids=lambda spec: spec.code.value)
def test_catalogue_messages_pass(spec: object) -> None:
    check_safe_text(spec.message)  # type: ignore[attr-defined]


def test_safe_reasons_pass() -> None:
    check_safe_text("attempt 1 failed with WORKER_CRASHED; next attempt in 0.00684 s")
    check_safe_text("")


def test_report_prints_figures_after_the_counts() -> None:
    report = ReliabilityReport()
    assert report.empty()
    report.attack("SIGKILL worker", 3)
    report.figure("files/s, calm", 123.456, "files/s")
    report.figure("files/s, calm", 120.0, "files/s")

    assert not report.empty()
    assert report.lines()[-2:] == ["figures measured:", "     120 files/s  files/s, calm"]
