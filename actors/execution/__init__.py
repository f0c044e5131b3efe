"""Execution: attempts run in killable, bounded processes, locally or on Ray.

The contract (:mod:`~actors.execution.contract`) and the factory that picks an executor
(:mod:`~actors.execution.factory`); screening before any parser runs; the extraction
itself and the classification of its failures; :mod:`~actors.execution.local` (the
worker pool and its worker processes) and :mod:`~actors.execution.ray` (a Ray task per
attempt).

The rule of this layer: it knows the policy and nothing above it. What runs inside a
worker process (``local.worker``, ``ray.task``, ``extract``, ``classify``) imports no
pykka, sqlite3, grpc or prometheus: a process that parses hostile PDFs loads only what
it runs. Names are imported from their modules: importing this package loads nothing.
"""
