"""The smallest run of ``scale-batches``' reads: a few stored batches, listed page by
page from a ``pdfbatch serve`` child, and a big batch read without its files."""

from __future__ import annotations

from bench.batch_listing import listing_latency
from bench.options import Options


def test_every_page_of_every_walk_is_timed_and_the_basic_view_stays_small() -> None:
    figures = {f.name: f for f in listing_latency(Options(files=120, repeat=2, workers=1))}

    many = figures["ListBatches page p99, 120 stored batches"]
    few = figures["ListBatches page p99, 100 stored batches (side by side)"]
    # 120 batches at 50 a page: 3 pages a walk, 2 walks; 100: 2 pages, as many walks.
    assert len(many.detail["latencies_ms"]) == 3 * 2
    assert len(few.detail["latencies_ms"]) == 2 * 2
    assert many.target == "< 20"
    assert many.value == max(many.detail["latencies_ms"])
    basic = figures["GetBatch BASIC p99, 1200-file batch"]
    full = figures["GetBatch FULL p99, 1200-file batch"]
    assert len(basic.detail["latencies_ms"]) == 2
    assert basic.detail["reply_bytes"] < 1024, "counts, no file"
    assert 100 * 50 < full.detail["reply_bytes"] < 4 * 1024 * 1024, "a first page of 100"
