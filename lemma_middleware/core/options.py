"""The middleware's options, validated and compiled once into one frozen object.

Both adapters take the same keyword options (see the README's table); they are turned into
a :class:`TracingOptions` by :meth:`TracingOptions.compile`, which raises ``ValueError`` for
an option that cannot work and logs a warning for one that works badly.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from types import MappingProxyType
from typing import Any, TypedDict

from langfuse import Langfuse

from lemma_middleware.core.attributes import metadata_value
from lemma_middleware.core.environment import variable
from lemma_middleware.core.identity import HeaderNames, IdentityResolver, header_names
from lemma_middleware.core.logs import logger
from lemma_middleware.core.redaction import Redactor
from lemma_middleware.core.sampling import SamplingRules

DEFAULT_EXCLUDE_PATHS: tuple[str, ...] = (
    "/health",
    "/healthz",
    "/livez",
    "/readyz",
    "/ready",
    "/ping",
    "/metrics",
    "/favicon.ico",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/static/",
)
"""Paths not traced by default: exact matches, or a match followed by ``/``; an entry ending
in ``/`` is a prefix. ``/health`` excludes ``/health`` and ``/health/db``, not ``/healthcare``."""


DEFAULT_EXCLUDE_METHODS: frozenset[str] = frozenset({"OPTIONS", "HEAD"})


SECRET_HEADERS: frozenset[str] = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
    }
)
"""Headers that carry credentials: never recorded, never usable as identity headers."""


AGENT_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
"""snake_case, kebab-case or CamelCase: how Lemma expects agent names."""


_ENVIRONMENT_PATTERN = re.compile(r"(?!langfuse)[a-z0-9_-]{1,40}")


AgentName = str | Callable[[Any], Any] | None


def valid_environment(environment: str | None) -> str | None:
    """``environment`` if Langfuse keeps it, else None (logged)."""
    if environment is None:
        return None
    if _ENVIRONMENT_PATTERN.fullmatch(environment):
        return environment
    logger.error(
        "lemma_middleware: environment %r does not match ^(?!langfuse)[a-z0-9_-]+$ "
        "(max 40 chars); Langfuse would drop it, so it is not recorded",
        environment,
    )
    return None


@dataclass(frozen=True)
class PathExclusions:
    """Which requests pass through untraced, compiled for a fast check."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    methods: frozenset[str]

    @classmethod
    def compile(
        cls, paths: Iterable[str | re.Pattern[str]], methods: Iterable[str]
    ) -> PathExclusions:
        """Exact paths (and their sub-paths), prefixes ending in ``/``, full-match regexes."""
        exact: set[str] = set()
        prefixes: list[str] = []
        patterns: list[re.Pattern[str]] = []
        for entry in paths:
            if isinstance(entry, re.Pattern):
                patterns.append(entry)
            elif entry.endswith("/"):
                prefixes.append(entry)
            else:
                exact.add(entry)
                prefixes.append(entry + "/")
        return cls(
            frozenset(exact),
            tuple(prefixes),
            tuple(patterns),
            frozenset(m.upper() for m in methods),
        )

    def __call__(self, method: str, path: str) -> bool:
        """True for a request that is passed through untraced."""
        if method in self.methods or path in self.exact:
            return True
        if self.prefixes and path.startswith(self.prefixes):
            return True
        return any(p.fullmatch(path) for p in self.patterns)


class OptionError(ValueError):
    """An invalid middleware option; the message names the option and the fix."""


@dataclass(frozen=True)
class TracingOptions:
    """Every option of the middleware, validated and compiled (see :meth:`compile`)."""

    agent_name: str | Callable[[Any], Any]
    thread_headers: tuple[str, ...]
    user_headers: tuple[str, ...]
    tenant_headers: tuple[str, ...]
    identity_resolver: IdentityResolver | None
    use_auth_user: bool
    langfuse: Langfuse | None
    service_name: str | None
    environment: str | None
    release: str | None
    version: str | None
    static_metadata: Mapping[str, str]
    """Encoded as Langfuse keeps it."""
    is_excluded: PathExclusions
    capture_input: bool
    capture_output: bool
    max_body_bytes: int
    redactor: Redactor
    input_from: Callable[[Any], Any] | None
    output_from: Callable[[Any], Any] | None
    trace_id_header: bytes | None
    """Lower-cased, latin-1."""
    continue_upstream_trace: bool
    flush_timeout: float
    """Seconds a lifespan shutdown or the process exit may spend delivering traces."""
    propagate_downstream: bool
    trusted_upstreams: tuple[IPv4Network | IPv6Network, ...]
    """Peers whose W3C baggage identity (and ``traceparent``) the middleware accepts."""
    adopt_clients: bool
    """Langfuse clients created before the middleware's, and one passed as ``langfuse=``,
    get the middleware's export (see :mod:`lemma_middleware.export.adoption`)."""
    sampling: SamplingRules
    """Which turns are kept (see :mod:`lemma_middleware.core.sampling`)."""

    def trusts(self, client: str | None) -> bool:
        """Whether a request from peer address ``client`` comes from a trusted upstream."""
        if not self.trusted_upstreams or not client:
            return False
        try:
            address = ip_address(client)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_upstreams)

    @property
    def wants_request(self) -> bool:
        """True when a user callable needs the framework's request object."""
        return self.identity_resolver is not None or callable(self.agent_name)

    @classmethod
    def compile(
        cls,
        *,
        agent_name: AgentName = None,
        thread_header: HeaderNames = "x-conversation-id",
        user_header: HeaderNames = "x-user-id",
        tenant_header: HeaderNames = "x-tenant-id",
        identity_resolver: IdentityResolver | None = None,
        use_auth_user: bool = True,
        langfuse: Langfuse | None = None,
        environment: str | None = None,
        release: str | None = None,
        version: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        exclude_paths: Iterable[str | re.Pattern[str]] = DEFAULT_EXCLUDE_PATHS,
        exclude_methods: Iterable[str] = DEFAULT_EXCLUDE_METHODS,
        capture_input: bool = True,
        capture_output: bool = True,
        max_body_bytes: int = 64 * 1024,
        redact_fields: Iterable[str] = (),
        input_from: Callable[[Any], Any] | None = None,
        output_from: Callable[[Any], Any] | None = None,
        trace_id_header: str | None = "x-trace-id",
        continue_upstream_trace: bool = False,
        service_name: str | None = None,
        flush_timeout: float = 5.0,
        propagate_downstream: bool = False,
        trusted_upstreams: Iterable[str] = (),
        adopt_clients: bool = True,
        sample_rate: float | None = None,
        keep_errors: bool = True,
        keep_slow: float | None = None,
    ) -> TracingOptions:
        """Validate and compile the options (the README's table documents each)."""
        env_agent = variable("LEMMA_AGENT_NAME")
        agent: str | Callable[[Any], Any] = agent_name or env_agent or "agent"
        if isinstance(agent, str) and not AGENT_NAME_PATTERN.fullmatch(agent):
            logger.warning(
                "lemma_middleware: agent_name %r is not snake_case, kebab-case or CamelCase; "
                "Lemma groups agents by this name",
                agent,
            )
        if agent_name is None and not env_agent:
            logger.warning("lemma_middleware: no agent_name and no LEMMA_AGENT_NAME; using 'agent'")
        options = {"thread_header": thread_header, "user_header": user_header}
        options["tenant_header"] = tenant_header
        headers = [header_names(h) for h in options.values()]
        for option, names in zip(options, headers, strict=True):
            for name in names:
                if name in SECRET_HEADERS:
                    raise OptionError(
                        f"{option}={name!r}: this header carries credentials, which are never "
                        f"recorded, so it cannot identify a request; use a header of its own "
                        f"(e.g. {option}='x-{option.split('_')[0]}-id') or identity_resolver="
                    )
        try:
            body_limit = max(0, int(max_body_bytes))
        except (TypeError, ValueError):
            raise OptionError(
                f"max_body_bytes={max_body_bytes!r}: expected a number of bytes, e.g. 65536"
            ) from None
        try:
            flush_seconds = float(flush_timeout)
        except (TypeError, ValueError):
            flush_seconds = -1.0
        if not 0 < flush_seconds < float("inf"):
            raise OptionError(
                f"flush_timeout={flush_timeout!r}: expected a positive number of seconds, e.g. 5"
            )
        if isinstance(trusted_upstreams, str):
            trusted_upstreams = [trusted_upstreams]
        try:
            networks = tuple(ip_network(entry.strip(), strict=False) for entry in trusted_upstreams)
        except (TypeError, ValueError, AttributeError):
            raise OptionError(
                f"trusted_upstreams={trusted_upstreams!r}: expected IP addresses or networks, "
                "e.g. ['10.0.0.0/8', '127.0.0.1']"
            ) from None
        sampling = _sampling_rules(sample_rate, keep_errors, keep_slow)
        return cls(
            agent_name=agent,
            thread_headers=headers[0],
            user_headers=headers[1],
            tenant_headers=headers[2],
            identity_resolver=identity_resolver,
            use_auth_user=use_auth_user,
            langfuse=langfuse,
            service_name=service_name or (agent if isinstance(agent, str) else None),
            environment=valid_environment(environment or variable("LANGFUSE_TRACING_ENVIRONMENT")),
            release=release or variable("LANGFUSE_RELEASE"),
            version=version,
            static_metadata=MappingProxyType(
                {str(k): metadata_value(str(k), v) for k, v in (metadata or {}).items()}
            ),
            is_excluded=PathExclusions.compile(exclude_paths, exclude_methods),
            capture_input=capture_input,
            capture_output=capture_output,
            max_body_bytes=body_limit,
            redactor=Redactor(redact_fields),
            input_from=input_from,
            output_from=output_from,
            trace_id_header=trace_id_header.lower().encode("latin-1") if trace_id_header else None,
            continue_upstream_trace=continue_upstream_trace,
            flush_timeout=flush_seconds,
            propagate_downstream=bool(propagate_downstream),
            trusted_upstreams=networks,
            adopt_clients=bool(adopt_clients),
            sampling=sampling,
        )


def _sampling_rules(
    sample_rate: float | None, keep_errors: bool, keep_slow: float | None
) -> SamplingRules:
    """The sampling options checked: a rate from 0 to 1 (else ``LEMMA_SAMPLE_RATE``, else
    1), a positive ``keep_slow``."""
    source: str = "sample_rate"
    raw: object = sample_rate
    from_environment = variable("LEMMA_SAMPLE_RATE")
    if raw is None and from_environment is not None:
        source, raw = "LEMMA_SAMPLE_RATE", from_environment
    try:
        rate = 1.0 if raw is None else float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise OptionError(
            f"{source}={raw!r}: expected the fraction of conversations kept, from 0.0 to 1.0 "
            "(e.g. 0.1 keeps one conversation in ten)"
        )
    slow: float | None = None
    if keep_slow is not None:
        try:
            slow = float(keep_slow)
        except (TypeError, ValueError):
            slow = -1.0
        if not 0 < slow < float("inf"):
            raise OptionError(
                f"keep_slow={keep_slow!r}: expected seconds (a turn that takes at least this "
                "long is kept whatever its conversation), e.g. 10, or None"
            )
    return SamplingRules(rate=rate, keep_errors=bool(keep_errors), keep_slow=slow)


class Options(TypedDict, total=False):
    """The middleware's keyword options, for type checkers (``add_middleware`` checks them
    and flags a misspelt one). The same names and types as :meth:`TracingOptions.compile`,
    whose signature is the reference (a test keeps the two equal)."""

    agent_name: AgentName
    thread_header: HeaderNames
    user_header: HeaderNames
    tenant_header: HeaderNames
    identity_resolver: IdentityResolver | None
    use_auth_user: bool
    langfuse: Langfuse | None
    environment: str | None
    release: str | None
    version: str | None
    metadata: Mapping[str, Any] | None
    exclude_paths: Iterable[str | re.Pattern[str]]
    exclude_methods: Iterable[str]
    capture_input: bool
    capture_output: bool
    max_body_bytes: int
    redact_fields: Iterable[str]
    input_from: Callable[[Any], Any] | None
    output_from: Callable[[Any], Any] | None
    trace_id_header: str | None
    continue_upstream_trace: bool
    service_name: str | None
    flush_timeout: float
    propagate_downstream: bool
    trusted_upstreams: Iterable[str]
    adopt_clients: bool
    sample_rate: float | None
    keep_errors: bool
    keep_slow: float | None


OPTION_NAMES: tuple[str, ...] = tuple(inspect.signature(TracingOptions.compile).parameters)
"""The keyword options every adapter takes."""

CONFIG_PREFIX = "LEMMA_"
"""A framework's configuration names an option ``LEMMA_<OPTION NAME>`` (Flask's
``app.config``, Django's settings): ``LEMMA_AGENT_NAME``, ``LEMMA_THREAD_HEADER``, ..."""


def config_name(option: str) -> str:
    """The configuration key of ``option`` (``thread_header`` -> ``LEMMA_THREAD_HEADER``)."""
    return CONFIG_PREFIX + option.upper()


def options_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The options a framework's configuration sets, by :func:`config_name`."""
    return {name: config[config_name(name)] for name in OPTION_NAMES if config_name(name) in config}


def compile_options(options: dict[str, Any]) -> TracingOptions:
    """:meth:`TracingOptions.compile`, with every misconfiguration an :class:`OptionError`
    naming the option and the fix."""
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        close = {name: difflib.get_close_matches(name, OPTION_NAMES, n=1) for name in unknown}
        hints = ", ".join(
            f"{name!r}" + (f" (did you mean {close[name][0]!r}?)" if close[name] else "")
            for name in unknown
        )
        raise OptionError(f"unknown option {hints}; the options are: {', '.join(OPTION_NAMES)}")
    try:
        return TracingOptions.compile(**options)
    except OptionError:
        raise
    except (TypeError, ValueError, re.error) as error:
        raise OptionError(f"invalid option value: {error}") from error
