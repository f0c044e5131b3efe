"""The command line's client commands (``submit``, ``status``, ``results``, ...), built on
:mod:`server.client`, with their progress display.

The rule of this package: like the client, it never imports the service or
:mod:`actors`; the service's own commands join it in :mod:`server.main`.
"""
