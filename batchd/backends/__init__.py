"""Backends: one module per server protocol, all behind ``base.Backend``.

Takes: plain arguments (a URL, timeouts, a key, a model path), never the settings: ``run.connect``
builds a backend from ``Settings``.
Hands on: ``base.ChatResult`` and ``LoadedModel`` records; server and transport failures as
``errors`` exceptions (``http`` maps them: httpx exceptions go no further).
May import: the root leaves except ``config``; nothing of the stages.

- ``base``: the ``Backend`` Protocol and the records every backend speaks
- ``ollama``, ``openai``, ``embedded``, ``multi``: one per protocol, ``multi`` over several hosts
- ``http``, ``transport``, ``wire``: HTTP errors mapped for all, the h11 transport, typed replies
- ``webhook``: one POST to a webhook receiver ([notify]), its HTTP errors caught here
- ``ollama_facts``, ``llama_log``, ``llama_grammar``: what an Ollama version lacks; llama.cpp's log and grammar
"""
