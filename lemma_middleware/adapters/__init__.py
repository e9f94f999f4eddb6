"""Protocol translation only: ASGI, WSGI and framework helpers turn their calls into the
core's calls. :class:`~lemma_middleware.adapters.tracing.Tracing` is what they all share.
"""
