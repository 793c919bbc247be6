"""Object storage with presigned URLs, like the S3/Azure storage RedBrick hands out.

Objects live as files under ``DIR/storage/<key>`` with an index row in the store. A
presigned URL is ``{base}/storage/<key>?expires=<unix>&signature=<hex>``, where the
signature is an HMAC-SHA256 over the method, the key and the expiry, made with a secret
kept in the store (so URLs survive a restart). A wrong signature, another method or a past
expiry is refused with 403, as a real bucket does (protocol §3).

Keys are checked like an S3 bucket checks them: at most 1024 bytes of UTF-8, no control
characters, no empty, ``.`` or ``..`` segment, and no segment over 255 bytes (a file name).
An upload never replaces a stored object with other bytes (409): items and label files are
written once; a retried PUT of the same bytes is accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, unquote

from autolabel.emulator.bodies import RequestRefused
from autolabel.emulator.store import Store

#: How long presigned URLs stay valid by default, in seconds.
DEFAULT_TTL_S = 3600.0
#: S3's limits: a key of at most 1024 bytes; each segment is a file name here (255 bytes).
MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255


class StorageRefused(RequestRefused):
    """A storage request is not allowed; ``status`` is the HTTP status to answer."""


def check_key(key: str) -> str:
    """``key`` without outer slashes when it is a valid storage key, else StorageRefused (400)."""
    clean = key.strip("/")
    parts = clean.split("/")
    encoded = [part.encode("utf-8", "surrogatepass") for part in parts]
    problem = None
    if not clean or any(part in ("", ".", "..") for part in parts):
        problem = "an empty, . or .. segment"
    elif any(ord(c) < 32 or ord(c) == 127 for c in clean):
        problem = "a control character"
    elif sum(len(part) + 1 for part in encoded) - 1 > MAX_KEY_BYTES:
        problem = f"over {MAX_KEY_BYTES} bytes"
    elif any(len(part) > MAX_SEGMENT_BYTES for part in encoded):
        problem = f"a segment over {MAX_SEGMENT_BYTES} bytes"
    if problem:
        raise StorageRefused(400, f"invalid storage key {key[:80]!r}...: {problem}")
    return clean


class BlobStore:
    """Presign, check and serve the objects of one emulator data directory."""

    def __init__(self, store: Store, *, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.store = store
        self.root = store.data_dir / "storage"
        self.root.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        secret = store.meta("storage_secret")
        if secret is None:
            secret = secrets.token_hex(32)
            store.set_meta("storage_secret", secret)
        self._secret = bytes.fromhex(secret)

    def path_of(self, key: str) -> Path:
        """The file that holds the object ``key``; refuses (400) keys :func:`check_key` does."""
        return self.root.joinpath(*check_key(key).split("/"))

    def exists(self, key: str) -> bool:
        """True when the object has been stored."""
        return self.store.blob(key) is not None

    def _signature(self, method: str, key: str, expires: int) -> str:
        message = f"{method}\n{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def presign(self, base_url: str, key: str, method: str, *, ttl_s: float | None = None) -> str:
        """A URL that allows ``method`` (GET or PUT) on ``key`` until it expires."""
        expires = int(time.time() + (self.ttl_s if ttl_s is None else ttl_s))
        signature = self._signature(method, key, expires)
        return (
            f"{base_url.rstrip('/')}/storage/{quote(key)}?expires={expires}&signature={signature}"
        )

    def check(self, method: str, raw_path: str, query: dict[str, str]) -> str:
        """The key a presigned request may act on; raises :class:`StorageRefused` (403)."""
        try:
            key = unquote(raw_path, errors="strict")
        except UnicodeDecodeError:
            raise StorageRefused(400, "the storage key is not UTF-8") from None
        try:
            expires = int(query.get("expires", ""))
        except ValueError:
            raise StorageRefused(403, "presigned URL without a valid expiry") from None
        expected = self._signature(method, key, expires)
        if not hmac.compare_digest(expected, query.get("signature", "")):
            raise StorageRefused(403, f"signature does not match for {method} {key[:80]!r}")
        if time.time() > expires:
            raise StorageRefused(403, f"presigned URL for {key[:80]!r} expired")
        check_key(key)
        return key

    def write(
        self, key: str, data: bytes, *, content_type: str | None, encoding: str | None
    ) -> None:
        """Store ``data`` under ``key`` (atomically replacing an older object)."""
        self._store_chunks(key, [data], content_type=content_type, encoding=encoding, replace=True)

    def receive(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        content_type: str | None,
        encoding: str | None,
    ) -> None:
        """Store an upload streamed in ``chunks``; never over an object with other bytes.

        Raises :class:`StorageRefused` (409) when ``key`` holds other bytes; the same
        bytes again (a retried PUT) are accepted and change nothing.
        """
        # follows redbrick/utils/files.py upload_files: a PUT is retried with the same file
        # after a network error, so the same bytes again must succeed.
        self._store_chunks(key, chunks, content_type=content_type, encoding=encoding, replace=False)

    def _store_chunks(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        content_type: str | None,
        encoding: str | None,
        replace: bool,
    ) -> None:
        path = self.path_of(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StorageRefused(409, f"{key[:80]!r} lies under a stored object") from None
        tmp = path.with_name(f".{secrets.token_hex(8)}.part")
        digest, size = hashlib.sha256(), 0
        try:
            with tmp.open("wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            # Under the store's own lock (one lock, never two): a label save already holds
            # it when it copies an upload here (workflow.stored_labels_map); a second lock
            # taken here after it, while an upload took it before the store's, deadlocked.
            with self.store.transaction():
                entry = self.store.blob(key)
                if entry is not None and not replace:
                    if entry["sha256"] == digest.hexdigest():
                        return  # a retried upload of the same bytes
                    raise StorageRefused(
                        409, f"{key[:80]!r} is already stored; upload to a new key"
                    )
                if path.is_dir():
                    raise StorageRefused(409, f"{key[:80]!r} is a folder of stored objects")
                os.replace(tmp, path)
                self.store.put_blob(
                    key, size=size, sha256=digest.hexdigest(),
                    content_type=content_type, encoding=encoding,
                )  # fmt: skip
        finally:
            tmp.unlink(missing_ok=True)

    def read(self, key: str) -> tuple[bytes, str | None, str | None]:
        """Bytes, content type and content encoding of ``key``; 404 when absent."""
        entry = self.store.blob(key)
        path = self.path_of(key)
        if entry is None or not path.is_file():
            raise StorageRefused(404, f"no object {key}")
        return path.read_bytes(), entry["content_type"], entry["content_encoding"]

    def copy(self, source: str, target: str) -> None:
        """Store a copy of the object ``source`` under ``target`` (404 when absent)."""
        data, content_type, encoding = self.read(source)
        self.write(target, data, content_type=content_type, encoding=encoding)
