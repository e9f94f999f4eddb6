"""Where traces go: Lemma, Langfuse, both, or any OTLP endpoint.

:func:`resolve_destinations` reads the environment users already have (or explicit
arguments):

* Lemma: ``LEMMA_API_KEY`` + ``LEMMA_PROJECT_ID`` (a UUID), ``LEMMA_BASE_URL`` (the full
  OTLP traces URL, default ``https://api.uselemma.ai/otel/v1/traces``);
* Langfuse: ``LANGFUSE_PUBLIC_KEY`` + ``LANGFUSE_SECRET_KEY`` (+ ``LANGFUSE_HOST`` /
  ``LANGFUSE_BASE_URL``);
* any OTLP/HTTP endpoint: ``LEMMA_OTLP_ENDPOINT`` (full traces URL) and optional
  ``LEMMA_OTLP_HEADERS`` (``name=value,name=value``).

Every configured destination gets every trace, each through its own background batch
processor and its own :class:`~lemma_middleware.delivery.exporter.DeliveryExporter` (retries with
backoff from a bounded backlog, failures counted and logged, exit bounded by
``flush_timeout``), so a slow or down destination never delays another (nor the request).
Without a Langfuse key pair the client is still given a working setup (the Langfuse
client disables itself without keys). A misconfiguration is logged once at start-up and
that destination is left out.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import langfuse

from lemma_middleware.core.environment import variable

LEMMA_DEFAULT_URL = "https://api.uselemma.ai/otel/v1/traces"
LANGFUSE_DEFAULT_URL = "https://cloud.langfuse.com"
LANGFUSE_TRACES_PATH = "api/public/otel/v1/traces"


@dataclass(frozen=True)
class Destination:
    """One OTLP/HTTP protobuf endpoint that receives every trace (``headers`` are sent
    with each request; ``langfuse_account`` is a Langfuse destination's public key, secret
    key and base URL, for the client's own API calls)."""

    name: str
    endpoint: str
    headers: Mapping[str, str] = field(default_factory=dict)
    langfuse_account: tuple[str, str, str] | None = None

    def __hash__(self) -> int:  # the headers are a dict: hashed by their items
        return hash((self.name, self.endpoint, tuple(sorted(self.headers.items()))))


def langfuse_headers(public_key: str, secret_key: str) -> dict[str, str]:
    """The headers Langfuse's own exporter sends to its OTLP endpoint (its documentation
    for direct exporters; a test compares them with the SDK's, release by release)."""
    token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")
    return {
        "Authorization": f"Basic {token}",
        "x-langfuse-sdk-name": "python",
        "x-langfuse-sdk-version": langfuse.__version__,
        "x-langfuse-public-key": public_key,
        "x-langfuse-ingestion-version": "4",
    }


def _parse_headers(raw: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in (raw or "").split(","):
        name, sep, value = item.partition("=")
        if sep and name.strip():
            headers[name.strip()] = value.strip()
    return headers


def _valid_url(url: str) -> bool:
    return url.startswith(("http://", "https://")) and len(url) > len("https://")


def resolve_destinations(
    *,
    lemma_api_key: str | None = None,
    lemma_project_id: str | None = None,
    lemma_url: str | None = None,
    langfuse_public_key: str | None = None,
    langfuse_secret_key: str | None = None,
    langfuse_host: str | None = None,
    otlp_endpoint: str | None = None,
    otlp_headers: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[list[Destination], list[str]]:
    """The destinations configured by arguments or environment, and the problems found."""

    def env(name: str) -> str | None:
        return variable(name, environ)

    problems: list[str] = []
    found = (
        _langfuse(
            langfuse_public_key or env("LANGFUSE_PUBLIC_KEY"),
            langfuse_secret_key or env("LANGFUSE_SECRET_KEY"),
            langfuse_host or env("LANGFUSE_BASE_URL") or env("LANGFUSE_HOST"),
            env("LANGFUSE_OTEL_TRACES_EXPORT_PATH"),
            problems,
        ),
        _lemma(
            lemma_api_key or env("LEMMA_API_KEY"),
            lemma_project_id or env("LEMMA_PROJECT_ID"),
            lemma_url or env("LEMMA_BASE_URL"),
            problems,
        ),
        _otlp(
            otlp_endpoint or env("LEMMA_OTLP_ENDPOINT"),
            otlp_headers or _parse_headers(env("LEMMA_OTLP_HEADERS")),
            problems,
        ),
    )
    return [destination for destination in found if destination is not None], problems


def _langfuse(
    public_key: str | None,
    secret_key: str | None,
    host: str | None,
    path: str | None,
    problems: list[str],
) -> Destination | None:
    if not (public_key and secret_key):
        if public_key or secret_key:
            missing = "LANGFUSE_SECRET_KEY" if public_key else "LANGFUSE_PUBLIC_KEY"
            problems.append(f"Langfuse key pair incomplete: {missing} is not set")
        return None
    host = (host or LANGFUSE_DEFAULT_URL).rstrip("/")
    if not _valid_url(host):
        problems.append(f"LANGFUSE_HOST {host!r} is not an http(s) URL")
        return None
    return langfuse_destination(public_key, secret_key, host, path)


def langfuse_destination(
    public_key: str,
    secret_key: str,
    base_url: str,
    path: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> Destination:
    """The Langfuse project of ``public_key`` at ``base_url``, as Langfuse's own exporter
    sends to it (``path``: ``LANGFUSE_OTEL_TRACES_EXPORT_PATH``; ``extra_headers``: the
    client's ``additional_headers``)."""
    path = path or LANGFUSE_TRACES_PATH
    base_url = base_url.rstrip("/")
    return Destination(
        "langfuse",
        f"{base_url}/{path.lstrip('/')}",
        langfuse_headers(public_key, secret_key) | dict(extra_headers or {}),
        (public_key, secret_key, base_url),
    )


def _lemma(
    api_key: str | None, project_id: str | None, url: str | None, problems: list[str]
) -> Destination | None:
    if not (api_key and project_id):
        if api_key or project_id:
            missing = "LEMMA_PROJECT_ID" if api_key else "LEMMA_API_KEY"
            problems.append(f"Lemma configuration incomplete: {missing} is not set")
        return None
    try:
        project_id = str(uuid.UUID(project_id.strip()))
    except ValueError:
        problems.append(
            f"LEMMA_PROJECT_ID {project_id!r} is not a UUID (Lemma answers 400); "
            "Lemma export is off"
        )
        return None
    url = url or LEMMA_DEFAULT_URL
    if not _valid_url(url):
        problems.append(f"LEMMA_BASE_URL {url!r} is not an http(s) URL")
        return None
    headers = {"Authorization": f"Bearer {api_key}", "X-Lemma-Project-ID": project_id}
    return Destination("lemma", url, headers)


def _otlp(
    endpoint: str | None, headers: Mapping[str, str], problems: list[str]
) -> Destination | None:
    if not endpoint:
        return None
    if not _valid_url(endpoint):
        problems.append(f"LEMMA_OTLP_ENDPOINT {endpoint!r} is not an http(s) URL")
        return None
    return Destination("otlp", endpoint, dict(headers))
