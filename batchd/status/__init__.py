"""Status: what people and scripts see of the daemon while it runs.

Takes: a narrow, read-only view of the daemon (settings, the running job's progress, jobs done,
clock, backend reachability) and journal reads.
Hands on: ``outbox/!status.html`` and ``!status.json``, Prometheus gauges (``/metrics``, textfile)
and the job views ``batchd status`` prints.
May import: the root leaves, ``journal`` and ``publish.share``; never ``run``, ``api``, ``ops`` or the
daemon (not even under ``TYPE_CHECKING``).

- ``state``: the narrow read-only state the daemon hands in (``StatusState``, ``JobProgress``)
- ``views``: the typed job views (``JobView``, ``ViewState``) and the one "running or cancelling" filter
- ``live``: the loop task that keeps the status files and gauges current
- ``page``: ``!status.html`` / ``!status.json``
- ``prom``: Prometheus exposition: registry, listener, textfile (counters read through ``COUNTS``)
- ``promserver``: the ``/metrics`` listener, bounded: a few handler threads, a deadline per connection
"""
