"""pdfbatch on the wire: the gRPC service and its clients, in layers.

- :mod:`server.service`: the service process (gRPC server, servicer, uploads, watches,
  settings, logs, metrics) and its commands (``serve``, ``hash-token``).
- :mod:`server.security`: who may call and how much (tokens, TLS, quotas, rate limits).
- :mod:`server.wire`: protobuf to domain values and back, refusals to status codes.
- :mod:`server.client` and :mod:`server.cli`: the Python client and the command line;
  they speak the wire only, never importing the service or ``actors``.
- :mod:`server.gen`: code generated from ``protos/``.

:mod:`server.main` is the ``pdfbatch`` program, where the command line and the service's
commands meet. The layers are checked by ``lint-imports`` (``make lint``).
"""
