"""Bounded copies of request/response bodies and how they are recorded on the root.

A :class:`BodyCapture` keeps at most ``limit`` bytes of what passes through and only
counts the rest, so memory stays bounded whatever the body size. :func:`render_body`
turns the kept bytes into what the trace records: JSON parsed, form bodies as a dict,
text as text, ``text/event-stream`` as the concatenated ``data:`` payloads, binary as a
short placeholder; a truncated body is recorded as text with a visible marker.
:class:`~lemma_middleware.redaction.Redactor` (its own module) replaces what is sensitive.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import parse_qsl

from lemma_middleware.core.logs import log_once
from lemma_middleware.core.redaction import Redactor


class BodyCapture:
    """Keeps the first ``limit`` bytes of a body and counts all of them."""

    __slots__ = ("_chunks", "kept", "limit", "total")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self.kept = 0
        self.total = 0

    def feed(self, data: bytes | memoryview) -> None:
        """Account for ``data``; keep it while under the limit."""
        size = len(data)
        if not size:
            return
        self.total += size
        room = self.limit - self.kept
        if room > 0:
            piece = data if size <= room else data[:room]
            self._chunks.append(bytes(piece))
            self.kept += len(piece)

    @property
    def truncated(self) -> bool:
        """True when more bytes passed than were kept."""
        return self.total > self.kept

    def data(self) -> bytes:
        """The kept bytes."""
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""


class RawJSON(str):
    """A JSON document recorded as received (no field needed redacting); parse it with
    :func:`parsed` where a structure is needed."""


def parsed(value: Any) -> Any:
    """``value``, with a :class:`RawJSON` document parsed (text if it is not valid JSON)."""
    if isinstance(value, RawJSON):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return str(value)
    return value


def media_type_of(content_type: str | None) -> str:
    """``"application/json; charset=utf-8"`` -> ``"application/json"``."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _is_text(media_type: str) -> bool:
    return (
        media_type.startswith("text/")
        or media_type.endswith("+xml")
        or media_type in ("application/xml", "application/javascript", "application/x-ndjson")
    )


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _truncation_marker(capture: BodyCapture) -> str:
    return f"… [truncated: {capture.total} bytes in total, first {capture.kept} recorded]"


def _form_dict(text: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        existing = result.get(key)
        if existing is None:
            result[key] = value
        elif isinstance(existing, list):
            existing.append(value)
        else:
            result[key] = [existing, value]
    return result


def query_dict(query_string: str, redactor: Redactor) -> dict[str, Any] | None:
    """Query parameters as a redacted dict, or None without any."""
    if not query_string:
        return None
    return redactor.redact(_form_dict(query_string)) or None


_SSE_DATA = re.compile(r"data:(?<![^\r\n]data:) ?([^\r\n]*)")  # at a line's start


def sse_payloads(text: str) -> str:
    """The concatenated ``data:`` payloads of an event stream (``[DONE]`` left out); lines
    end at CR, LF or CRLF, as the event-stream format has them."""
    return "".join(payload for payload in _SSE_DATA.findall(text) if payload != "[DONE]")


def _render_json(text: str, redactor: Redactor, direction: str) -> Any:
    """A JSON body: as it came when nothing in it is sensitive (neither parsed, walked nor
    serialised again, however deep), else parsed and redacted; as redacted text if it does
    not parse."""
    if redactor.finds_nothing_in_json(text):
        return RawJSON(text)
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):  # broken, or nested past the parser's limit
        log_once(
            f"badjson:{direction}",
            logging.INFO,
            "lemma_middleware: a %s body declared as JSON did not parse (broken or nested "
            "too deep); recorded as redacted text (logged once)",
            direction,
        )
        return redactor.redact_text(text)
    redacted = redactor.redact(document)
    return RawJSON(text) if redacted is document else redacted


def render_body(
    capture: BodyCapture,
    content_type: str | None,
    content_encoding: str | None,
    redactor: Redactor,
    direction: str,
) -> Any:
    """What the trace records for a captured body (None for an empty body)."""
    if capture.total == 0:
        return None
    media_type = media_type_of(content_type)
    if content_encoding and content_encoding.strip().lower() not in ("identity", ""):
        return f"<{content_encoding.strip()}-encoded {media_type or 'body'}, {capture.total} bytes>"
    data = capture.data()
    if media_type == "text/event-stream":
        text = sse_payloads(_decode(data))
        return redactor.redact_text(
            text + (_truncation_marker(capture) if capture.truncated else "")
        )
    if capture.truncated:
        if _is_json(media_type) or _is_text(media_type) or media_type.endswith("urlencoded"):
            return redactor.redact_text(_decode(data)) + _truncation_marker(capture)
        return f"<binary {media_type or 'body'}, {capture.total} bytes>"
    if _is_json(media_type):
        return _render_json(_decode(data), redactor, direction)
    if media_type == "application/x-www-form-urlencoded":
        return redactor.redact(_form_dict(_decode(data)))
    if media_type.startswith("multipart/"):
        return f"<{media_type}, {capture.total} bytes>"
    if _is_text(media_type):
        return redactor.redact_text(_decode(data))
    if not media_type:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return f"<binary body, {capture.total} bytes>"
        if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text):
            return redactor.redact_text(text)
    return f"<binary {media_type or 'body'}, {capture.total} bytes>"
