"""HTTP transport to RedBrick: one GraphQL endpoint and presigned storage URLs.

This is the only module of autolabel that imports ``requests``. It owns:

* the endpoint: ``POST {url}/graphql/`` with the SDK's URL normalisation
  (:func:`graphql_endpoint`, redbrick-protocol.md §1.1);
* the request encoding: ``base64(gzip(json))`` with ``Content-Encoding-RB: gzip`` and the
  key in an ``ApiKey`` header (§1.2);
* the error mapping onto :mod:`autolabel.errors` (§1.3, §5.2), see :func:`error_from_messages`;
* the retry policy: queries and downloads (idempotent) are retried with exponential backoff,
  jitter and ``Retry-After``; mutations and uploads are sent once (:class:`RetryPolicy`).

The API key is kept in the session headers only. It never appears in a log line, an error
message or a ``repr``; any server text that echoes it is scrubbed before it is raised.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests
import requests.adapters

from autolabel import __version__
from autolabel.errors import (
    AuthError,
    GraphQLError,
    NotFoundError,
    PlatformError,
    TransportError,
)
from autolabel.redbrick.endpoint import graphql_endpoint, storage_url_problem, without_query
from autolabel.redbrick.messages import error_from_messages
from autolabel.redbrick.retry import RETRYABLE_STATUSES, RetryPolicy, retry_after_seconds

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: The SDK version whose protocol we speak; the server may gate features on this header.
PROTOCOL_VERSION = "2.35.4"
API_KEY_LENGTH = 43
_CHUNK = 1 << 20
#: A 5xx answered faster than this is how RedBrick refuses a key (redbrick/common/client.py
#: ``_check_status_msg``: ``>= 500`` under 26 s is "may indicate an invalid API key").
_FAST_SERVER_ERROR_S = 26.0


class _Retry(Exception):
    """Internal: this try failed in a way worth repeating (if the call is idempotent)."""

    def __init__(self, error: PlatformError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class Transport:
    """A thread-safe connection to one RedBrick API: GraphQL calls and storage transfers.

    One ``requests.Session`` with keep-alive and a connection pool of ``pool_size``
    connections per host, so that up to that many worker threads can call concurrently.
    ``timeout`` is ``(connect, read)`` seconds for GraphQL calls; storage transfers use the
    same connect timeout and ``transfer_read_timeout`` between received bytes.

    TLS certificates are always verified unless ``verify=False`` is passed explicitly (a
    warning is logged). To trust a corporate proxy, pass a CA bundle path as ``verify`` or
    set ``REQUESTS_CA_BUNDLE``. ``RB_DISABLE_SSL_VERIFICATION`` is deliberately ignored.
    """

    def __init__(
        self,
        api_key: str,
        url: str | None = None,
        *,
        timeout: tuple[float, float] = (10.0, 60.0),
        transfer_read_timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        pool_size: int = 16,
        verify: bool | str = True,
    ) -> None:
        if not isinstance(api_key, str) or len(api_key.strip()) != API_KEY_LENGTH:
            # Say nothing about the value itself: it may be a real key with a stray character.
            raise AuthError(
                f"The API key must be {API_KEY_LENGTH} characters long; check the key you "
                "passed (RedBrick > Integrations > API keys)."
            )
        self.endpoint = graphql_endpoint(url)
        self.timeout = timeout
        self.transfer_timeout = (timeout[0], transfer_read_timeout)
        self.retry = retry or RetryPolicy()
        self._key = api_key.strip()
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.verify = verify
        if verify is False:
            log.warning("TLS certificate verification is OFF for %s", self.endpoint)
        if os.environ.get("RB_DISABLE_SSL_VERIFICATION"):
            log.warning(
                "RB_DISABLE_SSL_VERIFICATION is set but ignored: autolabel always verifies "
                "TLS; set REQUESTS_CA_BUNDLE to trust a proxy's certificate instead"
            )
        self._graphql_headers = {
            "ApiKey": self._key,
            "RB-SDK-Version": PROTOCOL_VERSION,
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Accept-Encoding": "gzip",
            "Content-Encoding-RB": "gzip",
            "User-Agent": f"autolabel/{__version__} requests/{requests.__version__}",
        }
        self._closed = threading.Event()
        #: Set once the server answered a GraphQL call with a status below 500: from then
        #: on the key is known good and a 5xx is a server fault, retried like any other.
        self._key_accepted = threading.Event()

    def __repr__(self) -> str:
        return f"Transport(endpoint={self.endpoint!r})"

    def close(self) -> None:
        """Close the pooled connections."""
        self._closed.set()
        self._session.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- GraphQL -------------------------------------------------------------------------

    def execute(
        self,
        operation: str,
        document: str,
        variables: Mapping[str, Any] | None = None,
        *,
        idempotent: bool,
        partial: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Send one GraphQL document and return its ``data`` object.

        With ``partial`` (a list), an answer with ``data`` next to ``errors`` (field errors)
        is kept, as the SDK's ``raise_for_error=False`` reads do
        (redbrick/common/client.py ``_process_json_response``): each error is appended to
        ``partial`` as ``{"message", "path"}`` and the data is returned. An answer whose
        data is null throughout still raises.

        ``idempotent=True`` (queries) retries transport failures per :attr:`retry`;
        ``idempotent=False`` (mutations) sends exactly once: after a :class:`TransportError`
        the caller must re-read the task to learn whether the write happened.

        Raises :class:`AuthError` (401/403, a refused key, or a fast 5xx before any call
        succeeded: how RedBrick refuses a key), :class:`NotFoundError` (404 or
        a not-found message), :class:`TaskStateError` (a task rule), :class:`GraphQLError`
        (any other ``errors``; the key's mere presence counts, as in the SDK) or
        :class:`TransportError` (connection, timeout, 429, 5xx, unreadable answer).
        """
        body = self._encode(document, variables or {})
        return self._with_retries(
            operation, idempotent, lambda: self._post_graphql(operation, body, partial)
        )

    def _encode(self, document: str, variables: Mapping[str, Any]) -> bytes:
        payload = json.dumps({"query": document, "variables": variables}, separators=(",", ":"))
        return base64.b64encode(gzip.compress(payload.encode("utf-8"), compresslevel=6))

    def _post_graphql(
        self, operation: str, body: bytes, partial: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        try:
            response = self._session.post(
                self.endpoint, data=body, headers=self._graphql_headers, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise _Retry(self._transport_error(operation, exc)) from exc
        with response:
            return self._read_graphql(operation, response, partial)

    def _read_graphql(
        self,
        operation: str,
        response: requests.Response,
        partial: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        status = response.status_code
        if status < 500:
            self._key_accepted.set()
        elif self._refused_key(response):
            raise AuthError(
                f"{operation}: RedBrick answered HTTP {status} at once to the first call, "
                "which is how it refuses an API key; check the key and that it belongs to "
                "this organization",
                operation=operation,
                status=status,
            )
        if status in (401, 403):
            raise AuthError(
                f"{operation}: RedBrick refused the API key (HTTP {status}); check the key "
                "and that it belongs to this organization",
                operation=operation,
                status=status,
            )
        if status == 404:
            raise NotFoundError(
                f"{operation}: API endpoint not found: {self.endpoint} (HTTP 404); check --url",
                operation=operation,
                status=status,
            )
        if status in RETRYABLE_STATUSES:
            error = TransportError(
                f"{operation}: RedBrick answered HTTP {status}{self._reason(response)}",
                operation=operation,
                status=status,
            )
            raise _Retry(error, retry_after_seconds(response))
        try:
            answer = response.json()
        except ValueError as exc:
            if status >= 400:
                raise PlatformError(
                    f"{operation}: RedBrick answered HTTP {status}{self._reason(response)}",
                    operation=operation,
                    status=status,
                ) from exc
            raise _Retry(
                TransportError(
                    f"{operation}: the answer is not JSON (HTTP {status}); a proxy in the way?",
                    operation=operation,
                    status=status,
                )
            ) from exc
        if not isinstance(answer, dict):
            raise TransportError(
                f"{operation}: unexpected answer shape", operation=operation, status=status
            )
        data = answer.get("data")
        kept = isinstance(data, dict) and any(v is not None for v in data.values())
        if "errors" in answer and partial is not None and kept and status < 400:
            partial.extend(
                {
                    "message": self.scrub(str(e.get("message", e))),
                    "path": list(e.get("path") or []),
                }
                if isinstance(e, dict)
                else {"message": self.scrub(str(e)), "path": []}
                for e in (answer["errors"] or [])
            )
            return dict(data) if isinstance(data, dict) else {}
        if "errors" in answer:
            messages = [
                self.scrub(str(e.get("message", e)) if isinstance(e, dict) else str(e))
                for e in (answer["errors"] or [])
            ] or ["(empty errors list)"]
            raise error_from_messages(messages, operation=operation, status=status)
        if status >= 400:
            raise PlatformError(
                f"{operation}: RedBrick answered HTTP {status}{self._reason(response)}",
                operation=operation,
                status=status,
            )
        if not isinstance(data, dict):
            raise GraphQLError(
                [f"{operation}: the answer has no data"], operation=operation, status=status
            )
        return data

    def _refused_key(self, response: requests.Response) -> bool:
        """True for a fast 5xx before any call succeeded: RedBrick's answer to a bad key.

        The SDK maps every fast 5xx to ``AuthenticationError`` and never retries it
        (redbrick/common/client.py). We keep that reading for the first call only, where
        the key is still unproven; a 503 with ``Retry-After`` asks to come back and is not
        a refusal.
        """
        if self._key_accepted.is_set() or response.headers.get("Retry-After"):
            return False
        return response.elapsed.total_seconds() < _FAST_SERVER_ERROR_S

    def _reason(self, response: requests.Response) -> str:
        text = self.scrub(response.text[:200].strip()) if response.text else ""
        return f": {text}" if text else ""

    # -- storage -------------------------------------------------------------------------

    def download(self, url: str, destination: Path, *, operation: str = "storage GET") -> Path:
        """Stream a presigned URL to ``destination`` atomically and return it.

        The bytes go to a temporary file next to ``destination`` that is renamed into place
        only when complete, so a crash never leaves a truncated file under the final name.
        Connection errors, truncated bodies, 429 and 5xx are retried per :attr:`retry`; a
        404 raises :class:`NotFoundError`, other 4xx a :class:`PlatformError` (an expired
        URL must be presigned again). No API key is sent to storage.
        """
        self.download_sha256(url, destination, operation=operation)
        return Path(destination)

    def download_sha256(
        self, url: str, destination: Path, *, operation: str = "storage GET"
    ) -> bytes:
        """:meth:`download`, returning the SHA-256 digest of the bytes written: hashed as
        they stream in (the attempt that completed), so the file is never read again."""
        self._check_storage_url(url, operation)
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        return self._with_retries(
            operation, True, lambda: self._download_once(url, destination, operation)
        )

    def _download_once(self, url: str, destination: Path, operation: str) -> bytes:
        shown = without_query(url)
        digest = hashlib.sha256()
        fd, temp_name = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    with self._session.get(
                        url, stream=True, timeout=self.transfer_timeout
                    ) as response:
                        error = self._storage_error(response, shown, operation)
                        if isinstance(error, TransportError):
                            raise _Retry(error, retry_after_seconds(response))
                        if error is not None:
                            raise error
                        for chunk in response.iter_content(_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                except requests.RequestException as exc:
                    raise _Retry(self._transport_error(operation, exc, shown)) from exc
            os.replace(temp_name, destination)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        return digest.digest()

    def upload(
        self,
        url: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        content_encoding: str | None = None,
        operation: str = "storage PUT",
    ) -> None:
        """PUT ``data`` to a presigned URL, once (uploads are never blindly retried).

        Headers are those the SDK sends (``x-ms-blob-type: BlockBlob`` for Azure-backed
        storage). Success is HTTP 200 or 201; anything else raises (§3.1).
        """
        self._check_storage_url(url, operation)
        shown = without_query(url)
        headers = {"Content-Type": content_type, "x-ms-blob-type": "BlockBlob"}
        if content_encoding:
            headers["Content-Encoding"] = content_encoding
        try:
            response = self._session.put(
                url, data=data, headers=headers, timeout=self.transfer_timeout
            )
        except requests.RequestException as exc:
            raise self._transport_error(operation, exc, shown) from exc
        with response:
            if response.status_code not in (200, 201):
                error = self._storage_error(response, shown, operation)
                if error is not None:
                    raise error
                raise PlatformError(
                    f"{operation}: {shown} answered HTTP {response.status_code}",
                    operation=operation,
                    status=response.status_code,
                )

    def _check_storage_url(self, url: str, operation: str) -> None:
        if (problem := storage_url_problem(url)) is not None:
            raise PlatformError(
                f"{operation}: {without_query(url)}: {problem}", operation=operation
            )

    def _storage_error(
        self, response: requests.Response, shown: str, operation: str
    ) -> PlatformError | None:
        """The error for a storage answer, or None when it succeeded (status < 400)."""
        status = response.status_code
        if status < 400:
            return None
        message = f"{operation}: {shown} answered HTTP {status}"
        if status in RETRYABLE_STATUSES:
            return TransportError(message, operation=operation, status=status)
        if status == 404:
            return NotFoundError(message, operation=operation, status=status)
        return PlatformError(
            message + " (an expired or invalid presigned URL?)", operation=operation, status=status
        )

    # -- shared --------------------------------------------------------------------------

    def _with_retries(self, operation: str, idempotent: bool, call: Callable[[], _T]) -> _T:
        attempts = self.retry.attempts if idempotent else 1
        for attempt in range(1, attempts + 1):
            started = time.monotonic()
            try:
                result = call()
            except _Retry as failure:
                if attempt >= attempts or self._closed.is_set():
                    raise failure.error from failure.__cause__
                pause = self.retry.delay(attempt, failure.retry_after)
                log.warning(
                    "%s failed (%s); retry %d/%d in %.1fs",
                    operation,
                    failure.error,
                    attempt,
                    attempts - 1,
                    pause,
                )
                time.sleep(pause)
                continue
            log.debug("%s ok in %.3fs (try %d)", operation, time.monotonic() - started, attempt)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _transport_error(
        self, operation: str, exc: Exception, where: str | None = None
    ) -> TransportError:
        kind = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
        target = where or self.endpoint
        detail = self.scrub(type(exc).__name__)
        return TransportError(
            f"{operation}: {kind} talking to {target} ({detail})", operation=operation
        )

    def scrub(self, text: str) -> str:
        """``text`` with the API key (if a server echoed it) replaced by ``***``."""
        return text.replace(self._key, "***") if self._key else text
