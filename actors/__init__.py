"""pdfbatch's supervision runtime, in four layers, each ignorant of the ones above it.

- :mod:`actors.policy`: pure values and rules (retry, restart intensity, the failure
  catalogue, states and transitions, the batch's book, what a result may hold).
- :mod:`actors.orchestration`: the pykka actors and what they run on.
- :mod:`actors.execution` and :mod:`actors.storage`, side by side below orchestration:
  killable workers that open PDFs (locally or on Ray), and the durable records.
- :mod:`actors.testing`: test doubles (a fake clock, an in-memory store).

Importing this package imports nothing else: a worker process loads only the policy and
execution modules it runs. The layers are checked by ``lint-imports`` (``make lint``).
"""
