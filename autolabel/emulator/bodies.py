"""Request bodies: their declared length, the limits, and bounded reading and decoding.

A request's body is judged before any of it is read: ``Content-Length`` must be one
decimal number no larger than the route's limit (:func:`declared_length`). Reading is then
bounded by that number, and a gzip body is inflated no further than :data:`GRAPHQL_LIMIT`
(:func:`decode_graphql`), so a small gzip bomb cannot grow in memory. Every refusal is a
:class:`RequestRefused` carrying the HTTP status to answer.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import json
import re
import zlib
from email.message import Message
from typing import Any

#: The largest GraphQL request body, as sent and once decoded (base64 and gzip undone).
#: The SDK's documents are a few kB and its biggest variables (``createDatapoint`` with
#: DICOM headers, ``validateAndConvertToImportFormat`` with a batch of tasks) far below.
GRAPHQL_LIMIT = 32 * 1024 * 1024
#: The largest admin request body (``/_emulator/...``).
ADMIN_LIMIT = 1024 * 1024
#: The largest object PUT to storage; uploads stream to disk, so this bounds disk, not RAM.
STORAGE_LIMIT = 2 * 1024 * 1024 * 1024

_DIGITS = re.compile(r"[0-9]{1,19}")


class RequestRefused(Exception):
    """A request is not served; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def declared_length(headers: Message, method: str, limit: int) -> int:
    """The body length a request declares, checked before anything is read.

    Bodies need a ``Content-Length`` (a presigned S3 PUT refuses chunked uploads with
    ``MissingContentLength`` the same way); GET and DELETE may leave it out (no body).
    Raises :class:`RequestRefused`: 411 without a length on POST/PUT or with
    ``Transfer-Encoding``, 400 for a value that is not one decimal number, 413 above ``limit``.
    """
    if headers.get("Transfer-Encoding"):
        raise RequestRefused(411, "send the body with a Content-Length, not Transfer-Encoding")
    values = headers.get_all("Content-Length") or []
    if not values:
        if method in ("POST", "PUT"):
            raise RequestRefused(411, f"a {method} request needs a Content-Length header")
        return 0
    text = values[0].strip()
    if len(set(values)) != 1 or not _DIGITS.fullmatch(text):
        raise RequestRefused(400, "Content-Length must be one non-negative decimal number")
    length = int(text)
    if length > limit:
        raise RequestRefused(413, f"the body of {length} bytes is over the {limit}-byte limit")
    return length


def _inflate(data: bytes, limit: int) -> bytes:
    """Undo gzip, refusing (413) output over ``limit`` bytes before it is all in memory."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise RequestRefused(400, f"cannot decode the request body: bad gzip ({exc})") from None
    if len(out) > limit:
        raise RequestRefused(413, f"the decoded body is over the {limit}-byte limit")
    return out


def decode_graphql(raw: bytes, *, gzipped: bool, limit: int = GRAPHQL_LIMIT) -> dict[str, Any]:
    """The JSON object of a GraphQL request body: ``{"query": str, "variables"?, ...}``.

    ``gzipped`` bodies are ``base64(gzip(JSON))``, what the SDK sends with
    ``Content-Encoding-RB: gzip`` (follows redbrick/common/client.py). Raises
    :class:`RequestRefused` (400 for a body that does not decode, 413 when too big decoded).
    """
    if gzipped:
        try:
            raw = _inflate(base64.b64decode(raw, validate=False), limit)
        except binascii.Error as exc:
            raise RequestRefused(
                400, f"cannot decode the request body: bad base64 ({exc})"
            ) from None
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RequestRefused(400, f"cannot decode the request body: not JSON ({exc})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        raise RequestRefused(400, "the body must be a JSON object with a query string")
    return payload


def decode_json(raw: bytes) -> Any:
    """The JSON value of an admin body ({} when empty); 400 when it is not JSON."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise RequestRefused(400, f"the body is not JSON: {exc}") from None
