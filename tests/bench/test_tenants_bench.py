"""``python -m bench.tenants`` at its smallest, so that it does not rot between uses.

The latencies mean nothing at this size; what is checked is that each phase holds
what it says (the streams and B's calls within their caps) and that none of A's calls
failed while they were held.
"""

from __future__ import annotations

from bench.tenants import Plan, measure


def test_the_tenants_bench_holds_each_attack_and_times_every_call() -> None:
    figures = measure(Plan(samples=10), files=5)

    assert figures["held"] == {
        "open streams held": 8,
        "B watches held": 16,
        "B uploads held": 8,
        "B uploads still held after": 8,
    }
    phases = figures["phases"]
    assert set(phases) == {
        "calm",
        "300 open streams",
        "B holds its watches and 40 stalled uploads",
    }
    assert all(phase["calls failed"] == 0 for phase in phases.values())
    assert figures["foreign/missing GetBatch median"] > 0
