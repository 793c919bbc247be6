"""Object storage with presigned URLs, like the S3/Azure storage RedBrick hands out.

Objects live as files under ``DIR/storage/<key>`` with an index row in the store. A
presigned URL is ``{base}/storage/<key>?expires=<unix>&signature=<hex>``, where the
signature is an HMAC-SHA256 over the method, the key and the expiry, made with a secret
kept in the store (so URLs survive a restart). A wrong signature, another method or a past
expiry is refused with 403, as a real bucket does (protocol §3).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote, unquote

from autolabel.emulator.store import Store

#: How long presigned URLs stay valid by default, in seconds.
DEFAULT_TTL_S = 3600.0


class StorageRefused(Exception):
    """A storage request is not allowed; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
        """The file that holds the object ``key``; refuses keys that leave the root."""
        clean = key.strip("/")
        parts = clean.split("/")
        if not clean or any(part in ("", ".", "..") for part in parts):
            raise StorageRefused(400, f"invalid storage key {key!r}")
        return self.root.joinpath(*parts)

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
        key = unquote(raw_path)
        try:
            expires = int(query.get("expires", ""))
        except ValueError:
            raise StorageRefused(403, "presigned URL without a valid expiry") from None
        expected = self._signature(method, key, expires)
        if not hmac.compare_digest(expected, query.get("signature", "")):
            raise StorageRefused(403, f"signature does not match for {method} {key}")
        if time.time() > expires:
            raise StorageRefused(403, f"presigned URL for {key} expired")
        return key

    def write(
        self, key: str, data: bytes, *, content_type: str | None, encoding: str | None
    ) -> None:
        """Store ``data`` under ``key`` (atomically replacing an older object)."""
        path = self.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.{secrets.token_hex(4)}.part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        digest = hashlib.sha256(data).hexdigest()
        self.store.put_blob(
            key, size=len(data), sha256=digest, content_type=content_type, encoding=encoding
        )

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
