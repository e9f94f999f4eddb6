"""Who a request belongs to: header lookup, validation and normalisation of ids.

Rules (the same for ASGI and WSGI, and for values passed to :func:`bind`):

* surrounding whitespace is stripped; an empty value counts as absent;
* a value containing a control character (``\\x00``-``\\x1f``, ``\\x7f``) is rejected
  (treated as absent) and logged once per field;
* a value of printable ASCII whose JSON encoding (how Langfuse checks it once it is copied
  into metadata) is at most 200 characters is kept exactly: up to 198 characters, fewer
  with ``"`` or ``\\`` in it;
* anything else (longer, or non-ASCII) is normalised to
  ``<percent-encoded prefix, at most 100 chars>~<sha256 hex of the value>``: at most 165
  characters, ASCII, the same for the same input and distinct for distinct inputs, so
  the conversation still groups in Lemma although Langfuse would drop the raw value.
  Each field logs this once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from opentelemetry import baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator

from lemma_middleware.core.logs import log_once

MAX_ID_LENGTH = 198
"""The longest id kept as is (Langfuse's limit, 200, less the quotes of its JSON form)."""


LANGFUSE_VALUE_LIMIT = 200
"""Langfuse drops a propagated value (a metadata value in its JSON form) over this."""


_PREFIX_LENGTH = 100


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


def normalise_id(value: object, field_name: str) -> str | None:
    """Return ``value`` as an id Langfuse keeps, or None when it is absent or rejected."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    value = value.strip()
    if not value:
        return None
    if _CONTROL_CHARS.search(value):
        log_once(
            f"control:{field_name}",
            logging.WARNING,
            "lemma_middleware: rejected a %s containing control characters; "
            "the trace is recorded without it (logged once)",
            field_name,
        )
        return None
    if len(value) + 2 + value.count('"') + value.count(
        "\\"
    ) <= LANGFUSE_VALUE_LIMIT and _PRINTABLE_ASCII.fullmatch(value):
        return value
    log_once(
        f"normalised:{field_name}",
        logging.INFO,
        "lemma_middleware: a %s longer than %d characters (JSON-encoded) or not ASCII was "
        "normalised to '<prefix>~<sha256>' so that Langfuse keeps it (logged once)",
        field_name,
        LANGFUSE_VALUE_LIMIT,
    )
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    prefix = quote(value, safe="")[:_PREFIX_LENGTH]
    return f"{prefix}~{digest}"


HeaderNames = str | Sequence[str] | None


def header_names(option: HeaderNames) -> tuple[str, ...]:
    """Compile a header option (a name, names tried in order, or None) to lower-case names."""
    if option is None:
        return ()
    if isinstance(option, str):
        option = (option,)
    return tuple(name.strip().lower() for name in option if name.strip())


def first_header(headers: Mapping[str, str], names: Iterable[str]) -> str | None:
    """The first present, non-empty value among ``names`` in lower-cased ``headers``.

    ASGI and WSGI hand header bytes over as latin-1 text; a value whose bytes are UTF-8
    (what clients send for non-ASCII ids) is read as UTF-8.
    """
    for name in names:
        value = headers.get(name)
        if value is not None and value.strip():
            if not value.isascii():
                with contextlib.suppress(UnicodeError):
                    value = value.encode("latin-1").decode("utf-8")
            return value
    return None


@dataclass
class Identity:
    """The conversation, user, tenant and extra metadata a request belongs to."""

    thread_id: str | None = None
    user_id: str | None = None
    tenant_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def merge(
        self,
        *,
        thread_id: object = None,
        user_id: object = None,
        tenant_id: object = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Overlay non-empty values (normalised); return True when anything changed."""
        changed = False
        for name, raw in (("thread_id", thread_id), ("user_id", user_id), ("tenant_id", tenant_id)):
            value = normalise_id(raw, name)
            if value is not None and value != getattr(self, name):
                setattr(self, name, value)
                changed = True
        if metadata:
            for key, value in metadata.items():
                if value is not None and self.metadata.get(key) != value:
                    self.metadata[str(key)] = value
                    changed = True
        return changed

    def overlay(self, other: Identity) -> None:
        """Take ``other``'s values (already normalised) where it has them."""
        if other.thread_id is not None:
            self.thread_id = other.thread_id
        if other.user_id is not None:
            self.user_id = other.user_id
        if other.tenant_id is not None:
            self.tenant_id = other.tenant_id
        if other.metadata:
            self.metadata.update(other.metadata)


IdentityResolver = Callable[[Any], Any]
"""A callable of the request (sync or async) returning a mapping with any of ``thread_id``,
``user_id``, ``tenant_id``, ``metadata``; None or missing keys leave the header values in
place."""


def identity_from_mapping(values: object) -> Identity | None:
    """An identity layer from a mapping (a resolver's result, a trusted upstream's baggage);
    None unless it is a non-empty mapping."""
    if not isinstance(values, Mapping) or not values:
        return None
    layer = Identity()
    layer.merge(
        thread_id=values.get("thread_id"),
        user_id=values.get("user_id"),
        tenant_id=values.get("tenant_id"),
        metadata=values.get("metadata"),
    )
    return layer


UPSTREAM_BAGGAGE_KEYS: dict[str, tuple[str, ...]] = {
    "thread_id": ("langfuse_session_id", "langfuse_metadata_lemma.thread_id"),
    "user_id": ("langfuse_user_id",),
    "tenant_id": ("langfuse_metadata_tenant_id",),
}
"""W3C baggage entries an upstream service writes (Langfuse's ``propagate_attributes(
as_baggage=True)``, this middleware's ``propagate_downstream``), per identity field."""


def identity_from_baggage(header: str | None) -> Identity | None:
    """An identity layer from a trusted upstream's ``baggage`` header; None if it has none."""
    if not header:
        return None
    entries = baggage.get_all(W3CBaggagePropagator().extract({"baggage": header}))
    found: dict[str, str] = {}
    for name, keys in UPSTREAM_BAGGAGE_KEYS.items():
        for key in keys:
            value = entries.get(key)
            if isinstance(value, str) and value:
                found[name] = _unquoted(value)
                break
    return identity_from_mapping(found)


def _unquoted(value: str) -> str:
    """Langfuse writes metadata values JSON-encoded (``"acme"``); ids come bare."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        with contextlib.suppress(ValueError):
            decoded = json.loads(value)
            if isinstance(decoded, str):
                return decoded
    return value


class IdentitySources:
    """The identity of one request, from five sources in rising precedence: headers, the
    authenticated user (user id only), a trusted upstream's baggage, the identity resolver,
    and ``bind()``."""

    ORDER = ("header", "auth", "upstream", "resolver", "bind")

    __slots__ = ("_effective", "_layers")

    def __init__(self, from_headers: Identity) -> None:
        self._layers: dict[str, Identity] = {"header": from_headers}
        self._effective: Identity | None = None

    def set(self, source: str, layer: Identity | None) -> None:
        """Use ``layer`` as what ``source`` says (None: nothing)."""
        if layer is not None:
            self._layers[source] = layer
            self._effective = None

    def bind(self, **values: Any) -> bool:
        """Overlay values on the ``bind`` source; True when anything changed."""
        changed = self._layers.setdefault("bind", Identity()).merge(**values)
        if changed:
            self._effective = None
        return changed

    def effective(self) -> Identity:
        """Every source overlaid in precedence order."""
        if self._effective is None:
            effective = Identity()
            for name in self.ORDER:
                layer = self._layers.get(name)
                if layer is not None:
                    effective.overlay(layer)
            self._effective = effective
        return self._effective


def user_id_of(user: object) -> str | None:
    """The id of whatever the framework's auth context holds: an auth user object (it has
    ``is_authenticated``: Starlette, Flask-Login), else a plain user (a string such as the
    WSGI ``REMOTE_USER``, a mapping, an object with ``id``/``user_id``/``username``: the
    user Litestar's auth middleware puts in ``scope["user"]``)."""
    if hasattr(user, "is_authenticated"):
        return user_id_from_auth_user(user)
    return user_id_from_plain_user(user)


def user_id_from_auth_user(user: object) -> str | None:
    """The id of an authenticated user object (Starlette ``request.user``, Flask-Login)."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    for attribute in ("identity", "id", "user_id", "username", "display_name"):
        try:
            value = getattr(user, attribute, None)
            if callable(value):
                value = value()
        except Exception:  # e.g. BaseUser.identity raises NotImplementedError
            continue
        if value is not None and value != "":
            return str(value)
    get_id = getattr(user, "get_id", None)
    if callable(get_id):
        return str(get_id())
    return None


def user_id_from_plain_user(user: object) -> str | None:
    """The id of a user given as a string, a mapping or an object with
    ``id``/``user_id``/``username`` (e.g. ``flask.g.user``, the WSGI ``REMOTE_USER``)."""
    if user is None or isinstance(user, str):
        return user or None
    for key in ("id", "user_id", "username"):
        value = user.get(key) if isinstance(user, Mapping) else getattr(user, key, None)
        if value is not None:
            return str(value)
    return None
