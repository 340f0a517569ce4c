"""The optional OpenAI-compatible Files + Batches HTTP API (extra ``api``).

Import ``batchd.api.server.serve`` only when ``api.listen`` is set: it needs
FastAPI and uvicorn. ``batchd.api.listen`` checks the setting without them.

May import: the root leaves, ``journal`` (cancels go through ``Journal.request_cancel``) and
``intake`` (uploads are claimed like inbox files); never ``run``, ``publish``, ``status`` or ``ops``.
"""
