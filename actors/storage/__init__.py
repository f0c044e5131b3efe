"""Storage: where batches, events, results and uploaded bytes live.

The store interface and the in-memory store (:mod:`~actors.storage.store`), the SQLite
store with its schema, connections, record codec, file rows
(:mod:`~actors.storage.sqlite_files`) and uploads in progress
(:mod:`~actors.storage.sqlite_uploads`), changes by state applied as rows are read
(:mod:`~actors.storage.moves`), content-addressed blobs (files, and rows of their own
SQLite file for small ones), and the retention sweep.

The rule of this layer: it keeps what it is given, within the policy's records; it
decides nothing (no state transition of its own) and never imports orchestration,
execution or the wire. Names are imported from their modules: importing this package
loads nothing.
"""
