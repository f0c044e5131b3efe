"""The command line's client commands (``submit``, ``status``, ``results``, ...), built on
:mod:`server.client`, with their progress display.

The parser and ``main`` are in :mod:`~server.cli.commands`; the commands on batches in
:mod:`~server.cli.batches`, those reading a batch's files in :mod:`~server.cli.files`,
``export`` in :mod:`~server.cli.export`.

The rule of this package: like the client, it never imports the service or
:mod:`actors`; the service's own commands join it in :mod:`server.main`.
"""
