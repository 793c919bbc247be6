"""A recording HTTP proxy on loopback: what a client really sends to RedBrick, byte for byte.

:class:`RecordingProxy` listens on ``localhost:<free port>`` and forwards every request to
an upstream (the emulator) unchanged, keeping each :class:`Exchange`: method, path, query,
request headers and body, answer status and body. GraphQL bodies are decoded the way the
server decodes them (``base64(gzip(JSON))`` when ``Content-Encoding-RB: gzip``), so tests
can compare the official SDK's traffic with ours: operations, variables, headers, and the
storage PUTs between them.

To record storage traffic too, hand out presigned URLs through the proxy
(``emulator.base_url = proxy.url``): the signature covers the object key, not the host.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

#: Hop-by-hop headers (RFC 9110 §7.6.1): a proxy does not forward them.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"}
)


@dataclass(frozen=True, kw_only=True)
class Exchange:
    """One request through the proxy and the upstream's answer."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int
    answer: bytes

    def header(self, name: str) -> str | None:
        """A request header by case-insensitive name, or None."""
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)

    @property
    def is_graphql(self) -> bool:
        """True for a ``POST .../graphql/`` call."""
        return self.method == "POST" and self.path.rstrip("/").endswith("graphql")

    def graphql(self) -> dict[str, Any]:
        """The decoded GraphQL request: ``{"query": ..., "variables": ...}``."""
        raw = self.body
        if (self.header("Content-Encoding-RB") or "").lower() == "gzip":
            raw = gzip.decompress(base64.b64decode(raw))
        payload = json.loads(raw)
        if not isinstance(payload, dict):
            raise ValueError("a GraphQL body is a JSON object")
        return payload

    def answer_json(self) -> Any:
        """The upstream's answer parsed as JSON."""
        return json.loads(self.answer)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: tuple[str, int], recorder: RecordingProxy) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream
        self.recorder = recorder


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the exchanges are the log."""

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        host, port = self.server.upstream
        upstream = http.client.HTTPConnection(host, port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            answer = response.read()
            answer_headers = [
                (k, v)
                for k, v in response.getheaders()
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
            ]
            status = response.status
        finally:
            upstream.close()
        parts = urlsplit(self.path)
        self.server.recorder.record(
            Exchange(
                method=self.command,
                path=parts.path,
                query=dict(parse_qsl(parts.query)),
                headers=dict(self.headers.items()),
                body=body,
                status=status,
                answer=answer,
            )
        )
        self.send_response(status)
        for name, value in answer_headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_PUT = do_POST = do_DELETE = _forward


class RecordingProxy:
    """Forwards to ``upstream`` (``http://localhost:PORT``) and records every exchange.

    Use :func:`recording_proxy` to run one. :attr:`url` is ``http://localhost:<port>``
    (it contains ``localhost``, so the official SDK keeps it as it is).
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._exchanges: list[Exchange] = []
        self._server = _ProxyServer(self._upstream, self)
        self.url = f"http://localhost:{self._server.server_address[1]}"

    def record(self, exchange: Exchange) -> None:
        """Keep one exchange (called by the serving threads)."""
        with self._lock:
            self._exchanges.append(exchange)

    @property
    def exchanges(self) -> list[Exchange]:
        """Every exchange so far, in the order the answers were sent."""
        with self._lock:
            return list(self._exchanges)

    def clear(self) -> None:
        """Forget what was recorded."""
        with self._lock:
            self._exchanges.clear()

    def serve(self) -> threading.Thread:
        """Start serving in a daemon thread."""
        thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="recording-proxy", daemon=True
        )
        thread.start()
        return thread

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def recording_proxy(upstream: str) -> Iterator[RecordingProxy]:
    """A :class:`RecordingProxy` in front of ``upstream``, served until the block exits."""
    proxy = RecordingProxy(upstream)
    thread = proxy.serve()
    try:
        yield proxy
    finally:
        proxy.close()
        thread.join(timeout=5)
