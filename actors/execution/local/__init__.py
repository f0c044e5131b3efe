"""The local executor: a pool of long-lived worker processes from a fork server
(:mod:`~actors.execution.local.pool`), the code that runs inside each
(:mod:`~actors.execution.local.worker`) and the kernel limits it runs under
(:mod:`~actors.execution.local.limits`). Importing this package loads nothing."""
