"""``llmcore serve``: an OpenAI-compatible HTTP server with continuous batching and a playground page.

The decoding side imports only torch and llmcore: :class:`~.engine.Engine` (the scheduler thread),
:class:`~.job.Job` (one request's decoding state) and :class:`~.batch.BatchCache` (the shared KV cache).
The HTTP side (:mod:`.app`, Starlette on uvicorn) needs the optional ``serve`` extra
(``pip install 'llmcore[serve]'``) and is imported only by the ``llmcore serve`` command and by whoever
calls :func:`~.app.create_app`. Request parsing (:mod:`.protocol`) and chat templates (:mod:`.chat`) are
plain Python. The guide is docs/guides/serving.md.
"""
