"""lemma-middleware: one Lemma-conformant Langfuse trace per request to your AI agent.

Everything users need is importable from here::

    from lemma_middleware import LemmaMiddleware, bind, set_input, set_output
"""

from .asgi import LemmaMiddleware
from .context import bind, current, get_trace_id, outgoing_headers, set_input, set_output
from .delivery import DeliveryStats, export_stats
from .export import build_client, resolve_destinations
from .flask_integration import LemmaFlask
from .identity import Identity, normalise_id
from .options import DEFAULT_EXCLUDE_METHODS, DEFAULT_EXCLUDE_PATHS, OptionError, TracingOptions
from .redaction import DEFAULT_REDACT_FIELDS, REDACTED
from .request import RequestTrace
from .tracing import Tracing
from .wsgi import LemmaWSGIMiddleware

__all__ = [
    "DEFAULT_EXCLUDE_METHODS",
    "DEFAULT_EXCLUDE_PATHS",
    "DEFAULT_REDACT_FIELDS",
    "REDACTED",
    "DeliveryStats",
    "Identity",
    "LemmaFlask",
    "LemmaMiddleware",
    "LemmaWSGIMiddleware",
    "OptionError",
    "RequestTrace",
    "Tracing",
    "TracingOptions",
    "bind",
    "build_client",
    "current",
    "export_stats",
    "get_trace_id",
    "normalise_id",
    "outgoing_headers",
    "resolve_destinations",
    "set_input",
    "set_output",
]
