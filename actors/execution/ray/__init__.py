"""The Ray executor: each attempt a Ray task (:mod:`~actors.execution.ray.task`), driven
and cancelled from the service (:mod:`~actors.execution.ray.executor`), its worker
process found and waited for on its node (:mod:`~actors.execution.ray.processes`). Ray is
an optional extra; importing this package loads nothing, Ray included."""
