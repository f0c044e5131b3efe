"""The service: the process that serves ``pdfbatch.v1.BatchService`` over gRPC.

The app wires store, workers, runtime and gRPC server together; the servicer turns
each call into runtime calls through the wire mapping; uploads, watches, settings,
logs, metrics and per-call identity live beside it; ``commands`` holds ``serve`` and
``hash-token``.

The rule of this layer: it drives :mod:`actors` only through the runtime, the store and
the blobs, and converts every value at the edge with :mod:`server.wire`. Nothing below
it (``actors``, the wire mapping) imports it; neither do the client and the command
line. Names are imported from their modules: importing this package loads nothing.
"""
