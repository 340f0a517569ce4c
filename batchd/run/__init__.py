"""Run: the one running job's requests go to the backend and their outcomes into the journal.

Takes: a queued job from the journal and a ``backends.base.Backend``.
Hands on: every request recorded in the journal (done, failed or back to queued) and the job's
``metrics.JobMetrics``; the run ends in a ``RunOutcome``.
May import: the root leaves, ``backends``, ``journal`` and ``intake.ingest``'s body helpers; never
``publish``, ``status``, ``api`` or ``ops``.

- ``turns``: ``Turns``, the next job and whether the running one yields (``schedule``'s rules)
- ``failfast``: a window of answers failing one way pauses the job (``needs_attention``)
- ``runner``: ``JobRunner``: lanes fed in input order, stop/cancel/grace control, monitor, batched writes
- ``attempts``: one request to its outcome: calls, retries, overflow/OOM/truncation/invalid-reply handling
- ``context``: per-lane ``Conversation``: what each call sends, token prediction, trimming
- ``lanes``: ``LaneController``, how many requests may be in flight (``backend.lanes = "auto"``)
- ``knee``: the scan that finds the throughput curve's knee for ``lanes`` (past flat steps)
- ``vram``: GPU memory sources and the high/low-water policy
- ``outage``: ``Gate``: while the backend is down every lane waits on one prober
- ``serverside``, ``reloads``: the server a job runs on, and noticing it reload the model
- ``connect``: the one place that builds a backend from the settings (``make_backend``)
- ``translate``: an OpenAI batch body to a backend request; result ids
- ``replies``: schema validation of replies and the correction message
"""
