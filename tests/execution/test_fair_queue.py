"""FairQueue: turns across tenants, then batches; a batch's own order kept."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from actors.execution.local.fair_queue import FairQueue

Item = tuple[str, str, int]  # tenant, batch, number


def queue_of(items: list[Item]) -> FairQueue[Item]:
    queue: FairQueue[Item] = FairQueue(lambda item: (item[0], item[1]))
    for item in items:
        queue.append(item)
    return queue


def drain(queue: FairQueue[Item]) -> list[Item]:
    return [queue.popleft() for _ in range(len(queue))]


def test_tenants_take_turns_then_their_batches() -> None:
    queue = queue_of(
        [("b", "big", n) for n in range(3)]
        + [("b", "other", 0)]
        + [("a", "small", 0), ("a", "small", 1)]
    )

    assert drain(queue) == [
        ("b", "big", 0),
        ("a", "small", 0),
        ("b", "other", 0),
        ("a", "small", 1),
        ("b", "big", 1),
        ("b", "big", 2),
    ]
    assert len(queue) == 0


def test_given_back_items_go_to_the_head_of_their_line() -> None:
    queue = queue_of([("a", "x", 1), ("a", "x", 2)])
    queue.appendleft(("a", "x", 0))

    assert drain(queue) == [("a", "x", 0), ("a", "x", 1), ("a", "x", 2)]


def test_remove_and_remove_if_take_items_out() -> None:
    queue = queue_of([("a", "x", 0), ("a", "y", 0), ("b", "x", 1), ("b", "z", 0)])

    assert queue.remove(("a", "y", 0))
    assert not queue.remove(("a", "y", 0))
    assert queue.remove_if(lambda item: item[1] == "x") == [("a", "x", 0), ("b", "x", 1)]
    assert drain(queue) == [("b", "z", 0)]


items = st.lists(
    st.tuples(st.sampled_from("abc"), st.sampled_from("xyz"), st.integers(0, 5)), max_size=40
)


@given(items)
def test_every_item_comes_out_once_and_each_batch_in_its_order(queued: list[Item]) -> None:
    queue = queue_of(queued)

    out = drain(queue)

    assert sorted(out) == sorted(queued)
    for line in {(tenant, batch) for tenant, batch, _ in queued}:
        assert [i for i in out if i[:2] == line] == [i for i in queued if i[:2] == line]


@given(items)
def test_no_tenant_waits_for_more_than_one_turn_of_each_other_tenant(queued: list[Item]) -> None:
    out = drain(queue_of(queued))

    tenants = {tenant for tenant, _, _ in queued}
    # While a tenant still has items, between two of its items each other tenant gets
    # at most one turn.
    for tenant in tenants:
        positions = [index for index, item in enumerate(out) if item[0] == tenant]
        for start, end in itertools.pairwise(positions):
            between = [item[0] for item in out[start + 1 : end]]
            assert all(between.count(other) <= 1 for other in tenants)
