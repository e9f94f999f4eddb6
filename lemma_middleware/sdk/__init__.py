"""Every use of private Langfuse and OpenTelemetry state, in one place, checked at start-up.

The middleware needs a few things the SDKs do not expose publicly. Each is read in this
subpackage and nowhere else; its start-up checks (:func:`.client.inspect_client`,
:func:`.spans.check_span_internals` and one per speed-up) find out at start-up
whether they are still where this module expects them. A missing one is logged once, as an
error naming what is lost, and the public API (or switching the feature off) takes over:

==============================  ============================  =====================================
private state                   used for                      without it
==============================  ============================  =====================================
``Langfuse._otel_tracer``       starting the root with its    ``start_as_current_observation``
                                attributes in one call        (public, slower)
``Langfuse._mask``              applying the client's         bodies are not recorded (privacy
                                ``mask=`` to the root         fails closed)
``Langfuse._environment``,      the client's environment      ``LANGFUSE_TRACING_ENVIRONMENT``,
``Langfuse._release``           and release                   ``LANGFUSE_RELEASE`` / the options
``Langfuse._resources``         a user-supplied client's      span processors not installed:
                                provider, key, export filter  no re-parenting, no late identity
``Langfuse._tracing_enabled``   a disabled client             taken as enabled
``Span._parent``                re-parenting under the        no re-parenting
                                nearest exported ancestor
``TracerProvider.               running the ancestry          added last: children of unexported
_active_span_processor``        processor before Langfuse's   spans may be marked app roots
``langfuse._client.propagation  carrying the propagated       Langfuse's ``propagate_attributes``
._get_propagated_context_key``  attributes in the request's   (public; also writes them on the
                                context directly              root once more)
``LangfuseSpanProcessor.        letting batches that cannot   every batch goes through Langfuse's
_batch_processor._exporter``,   hold media skip Langfuse's    media pass (public behaviour,
``LangfuseTransforming          media pass (an identical      slower export)
SpanExporter._exporter``        copy of every span)
``langfuse._client.get_client  making ``get_client()`` in a  with several clients in the
._current_public_key``          request return the            process, ``get_client()`` without a
                                middleware's client           key gives a disabled client
the text of Langfuse's          noticing a client created     no warning that it stays
"initialized without            before the middleware's       disabled
public_key" log line            with no key (Lemma/OTLP only)
``LangfuseSpanProcessor.        doing that processor's part   roots go through Langfuse's
_span_export_expectation_by     for the middleware's roots    processor (slower)
_id``, ``_app_root_lock``,      directly (the app-root mark
``_should_export_span``,        and the bookkeeping children
``_available_skills``; the      look up), through a copy of
SDK ``Tracer``'s                the client's tracer
``span_processor``,
``_instrumentation_scope``,
``_span_limits``
``LangfuseResourceManager.      noticing that a Langfuse      no warning that the client's
_instances``                    client for the key exists     settings are not the middleware's
                                already (its settings win)
FastAPI's ``scope["fastapi.     skipping FastAPI's native     FastAPI's telemetry runs; wrapped
telemetry"]`` key, the OTel     telemetry when nothing        by the middleware, it starts a
API's default meter/logger      would receive what it         detached trace (warned, with the
provider classes, ``Langfuse    records                       fix)
SpanProcessor._should_export
_span``
Django's ``HttpRequest.       teeing the request body as    the Django request body is not
_stream``                     the app reads it              recorded
Django's ``LazyObject.        reading a ``request.user``    only the user the middleware loads
_wrapped``, the request's     the app already loaded        (``request.user`` / ``auser()``,
``_cached_user``,             (no second load)              public) is recorded
``_acached_user``
Django's ``SimpleLazyObject.    telling, without loading it,  the anonymous user of a request
_setupfunc`` (the lazy user     that ``request.user`` is      without a session is loaded (a few
``AuthenticationMiddleware``    anonymous (no session:        microseconds, no query)
sets)                           no session user)
==============================  ============================  =====================================
"""
