"""lemma-middleware: one Lemma-conformant Langfuse trace per request to your AI agent.

Everything users need is importable from here (``__all__`` is the API the README
documents; the subpackages are the implementation)::

    from lemma_middleware import LemmaMiddleware, bind, set_input, set_output
"""

from lemma_middleware.adapters.asgi import LemmaMiddleware
from lemma_middleware.adapters.flask import LemmaFlask
from lemma_middleware.adapters.wsgi import LemmaWSGIMiddleware
from lemma_middleware.core.identity import normalise_id
from lemma_middleware.core.options import (
    DEFAULT_EXCLUDE_METHODS,
    DEFAULT_EXCLUDE_PATHS,
    OptionError,
    Options,
)
from lemma_middleware.core.redaction import DEFAULT_REDACT_FIELDS, REDACTED
from lemma_middleware.delivery.stats import DeliveryStats
from lemma_middleware.export.client import build_client
from lemma_middleware.export.destinations import resolve_destinations
from lemma_middleware.export.stats import ExportStats, export_stats
from lemma_middleware.request.context import (
    bind,
    get_trace_id,
    outgoing_headers,
    set_input,
    set_output,
    set_route,
)
from lemma_middleware.request.sampling import SamplingStats

__all__ = [
    "DEFAULT_EXCLUDE_METHODS",
    "DEFAULT_EXCLUDE_PATHS",
    "DEFAULT_REDACT_FIELDS",
    "REDACTED",
    "DeliveryStats",
    "ExportStats",
    "LemmaFlask",
    "LemmaMiddleware",
    "LemmaWSGIMiddleware",
    "OptionError",
    "Options",
    "SamplingStats",
    "bind",
    "build_client",
    "export_stats",
    "get_trace_id",
    "normalise_id",
    "outgoing_headers",
    "resolve_destinations",
    "set_input",
    "set_output",
    "set_route",
]
