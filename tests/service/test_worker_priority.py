"""The service's local workers run below its own CPU priority, as far as its settings say."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers.security_processors import FENCE
from tests.helpers.server_fixtures import ServerFactory


@pytest.mark.parametrize(("setting", "below"), [({}, 19), ({"worker_niceness": 0}, 0)])
def test_workers_run_as_far_below_the_service_as_set(
    serve: ServerFactory, setting: dict[str, int], below: int
) -> None:
    server = serve(processor=FENCE, **setting)
    batch = server.submit(("a.pdf", b"%PDF-1.7"))
    server.settle(batch.batch_id)

    (page,) = server.client.result(batch.batch_id, batch.files[0].file_id).pages
    # What the worker reports of itself; the service runs at this test's niceness.
    assert json.loads(page)["niceness"] == min(os.nice(0) + below, 19)
