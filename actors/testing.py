"""Test doubles of the runtime's dependencies: a clock that moves when told, a store in
memory. Public, like ``trio.testing``: tests of code built on the runtime use them too."""

from actors.orchestration.clock import FakeScheduler
from actors.storage.store import MemoryStore

__all__ = ["FakeScheduler", "MemoryStore"]
