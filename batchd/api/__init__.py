"""The optional OpenAI-compatible Files + Batches HTTP API (extra ``api``).

Import ``batchd.api.server.serve`` only when ``api.listen`` is set: it needs
FastAPI and uvicorn. ``batchd.api.listen`` checks the setting without them.
"""
