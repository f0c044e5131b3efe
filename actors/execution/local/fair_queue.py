"""The order in which queued attempts reach workers: fair across tenants, then batches.

First come, first served let one tenant's 300-file batch hold every worker while
another tenant's one-file batch waited behind all of it (13.9 s against 0.4 s alone).
:class:`FairQueue` takes turns instead: tenants with queued work in a ring, and inside
each tenant its batches with queued work in a ring; each turn takes one attempt, from
the head of one batch's line. That is deficit round-robin with a quantum of one
attempt and every attempt costing one, since the cost of a file is not known before it
runs. A tenant with two batches therefore gets the same share as a tenant with one, and
a batch's own files keep their order. A batch's ``max_concurrency`` still caps how many
of its attempts are queued at all (its supervisor submits no more), so it is a cap and
never a claim on the whole pool.

Pure data: no lock, no thread. :class:`~actors.execution.local.pool.WorkerPool` holds
its lock around every call.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["FairQueue"]

_T = TypeVar("_T")


class FairQueue(Generic[_T]):
    """Items in lines per (tenant, batch), taken in turns.

    Args:
        key: The (tenant, batch) an item belongs to.
    """

    def __init__(self, key: Callable[[_T], tuple[str, str]]) -> None:
        self._key = key
        # tenant -> batch -> its line; both rings rotate by moving an entry to the end.
        self._tenants: OrderedDict[str, OrderedDict[str, deque[_T]]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[_T]:
        for batches in self._tenants.values():
            for line in batches.values():
                yield from line

    def append(self, item: _T) -> None:
        """Queue ``item`` at the end of its batch's line."""
        self._line(item).append(item)
        self._count += 1

    def appendleft(self, item: _T) -> None:
        """Queue ``item`` at the head of its batch's line (it was taken, then given back)."""
        self._line(item).appendleft(item)
        self._count += 1

    def popleft(self) -> _T:
        """The next item in turn: the head of the next batch of the next tenant.

        Raises:
            IndexError: The queue is empty.
        """
        if not self._tenants:
            raise IndexError("pop from an empty FairQueue")
        tenant, batches = next(iter(self._tenants.items()))
        batch, line = next(iter(batches.items()))
        item = line.popleft()
        self._count -= 1
        if line:
            batches.move_to_end(batch)
        else:
            del batches[batch]
        if batches:
            self._tenants.move_to_end(tenant)
        else:
            del self._tenants[tenant]
        return item

    def remove(self, item: _T) -> bool:
        """Take ``item`` out; ``False`` if it was not queued."""
        tenant, batch = self._key(item)
        batches = self._tenants.get(tenant)
        line = batches.get(batch) if batches is not None else None
        if batches is None or line is None or item not in line:
            return False
        line.remove(item)
        self._count -= 1
        if not line:
            del batches[batch]
            if not batches:
                del self._tenants[tenant]
        return True

    def remove_if(self, predicate: Callable[[_T], bool]) -> list[_T]:
        """Take out every item for which ``predicate`` holds; them, in queue order."""
        removed: list[_T] = []
        for tenant in list(self._tenants):
            batches = self._tenants[tenant]
            for batch in list(batches):
                line = batches[batch]
                kept = deque(item for item in line if not predicate(item))
                if len(kept) == len(line):
                    continue
                removed.extend(item for item in line if predicate(item))
                if kept:
                    batches[batch] = kept
                else:
                    del batches[batch]
            if not batches:
                del self._tenants[tenant]
        self._count -= len(removed)
        return removed

    def remove_batch(self, tenant: str, batch: str) -> list[_T]:
        """Take out the whole line of one batch; its items, in order."""
        batches = self._tenants.get(tenant)
        if batches is None:
            return []
        line = batches.pop(batch, None)
        if not batches:
            del self._tenants[tenant]
        if line is None:
            return []
        self._count -= len(line)
        return list(line)

    def clear(self) -> list[_T]:
        """Take out everything; the items, tenant by tenant."""
        everything = list(self)
        self._tenants.clear()
        self._count = 0
        return everything

    def _line(self, item: _T) -> deque[_T]:
        tenant, batch = self._key(item)
        batches = self._tenants.setdefault(tenant, OrderedDict())
        line = batches.get(batch)
        if line is None:
            line = batches[batch] = deque()
        return line
