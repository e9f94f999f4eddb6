"""An OTLP/HTTP destination on 127.0.0.1 that can be up, answer an error, hang, or be gone."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lemma_middleware.inbox.receiver import _gunzip, decode_export
from lemma_middleware.testing.records import ReceivedSpan


class FlakyDestination:
    """``mode``: ``"up"`` (200, spans kept), an HTTP status such as ``503`` (answered with
    ``retry_after`` if set), or ``"hang"`` (no answer for ``hang_seconds``). :meth:`stop`
    closes the port (connection refused); :meth:`start` opens it again on the same port."""

    def __init__(self, port: int = 0) -> None:
        self.mode: str | int = "up"
        self.retry_after: str | None = None
        self.hang_seconds = 30.0
        self.delay = 0.0
        """Seconds an ``up`` destination takes before it answers (a slow collector)."""
        self.span_names: list[str] = []
        self.received: list[tuple[str, Any]] = []
        """``(path, span)`` for every span received (a ``ReceivedSpan``)."""
        self.attempts = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.port = port
        self._connections: list[socket.socket] = []
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def start(self) -> FlakyDestination:
        destination = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                destination._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the port and every open connection, as a process that died would."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def distinct(self) -> set[str]:
        with self._lock:
            return set(self.span_names)

    def wait_for(self, names: set[str], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: names <= set(self.span_names), timeout)

    def trace(self, trace_id: str, names: set[str], timeout: float = 30) -> list[ReceivedSpan]:
        """The spans of ``trace_id`` received, once every one of
        ``names`` is among them (the export batches) or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while True:
            spans = [span for _, span in list(self.received) if span.trace_id == trace_id]
            if names <= {span.name for span in spans} or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)

    @staticmethod
    def root_and_children(spans: list[ReceivedSpan]) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
        """A trace's one root, and the rest."""
        (root,) = (span for span in spans if span.parent_span_id is None)
        return root, [span for span in spans if span is not root]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        with self._lock:
            self.attempts += 1
            mode = self.mode
            self._connections.append(handler.connection)
        if mode == "hang":
            time.sleep(self.hang_seconds)
            handler.close_connection = True
            return
        if mode != "up":
            handler.send_response(int(mode))
            if self.retry_after is not None:
                handler.send_header("Retry-After", self.retry_after)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        time.sleep(self.delay)
        if handler.headers.get("Content-Encoding") == "gzip":
            body = _gunzip(body, 64 << 20)
        spans = decode_export(body, handler.headers.get("Content-Type", ""))
        with self._changed:
            self.span_names.extend(span.name for span in spans)
            self.received.extend((handler.path, span) for span in spans)
            self._changed.notify_all()
        handler.send_response(200)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
