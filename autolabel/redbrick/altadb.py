"""Items of Datasets-backed projects: ``altadb://`` manifests, as redbrick-sdk 2.35.4 reads them.

For such a project ``presignItems`` answers ``altadb:`` URLs, one per series
(``redbrick/utils/files.py`` ``is_altadb_item``), and ``redbrick/utils/altadb.py``
``save_dicom_series`` reads one like this:

1. the URL: ``altadb:///PATH`` is ``PATH`` on the API's base URL, ``altadb://HOST/PATH`` is
   ``https://HOST/PATH``;
2. GET it: a JSON manifest ``{"metaData": URL, "imageFrames": [{"id", "path": URL}]}``;
3. GET ``metaData``: ``{"instances": [{"metaData": DICOM JSON, "frames": [{"id",
   "metaData": {"00020010": {"Value": [transfer syntax]}}}]}]}``;
4. GET each instance's frames (by id, through ``imageFrames``) and build one DICOM file.

This module does steps 1 to 4 up to the bytes: it returns :class:`AltaInstance` parts (header,
transfer syntax, frame files), and :mod:`autolabel.imaging.altadb` writes the DICOM files
(only imaging imports pydicom). Frame files are named by position, never by a server id.
No API key is sent with these requests: the URLs are presigned, as storage URLs are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autolabel.errors import ImageError, PlatformError
from autolabel.redbrick.transport import Transport

SCHEME = "altadb:"


def is_altadb(url: str | None) -> bool:
    """True for an AltaDB (Datasets) URL, as the SDK tells them: the ``altadb:`` prefix."""
    return bool(url) and str(url).startswith(SCHEME)


def api_base(endpoint: str) -> str:
    """The API's base URL for a GraphQL endpoint (``…/graphql/`` and an ``/api`` dropped),
    as ``redbrick/export/dataset.py`` derives it for ``altadb:///`` URLs."""
    base = endpoint.rstrip("/")
    base = base.removesuffix("/graphql")
    return base.removesuffix("/api")


def resolve(url: str, base: str) -> str:
    """The HTTP URL of an ``altadb:`` URL (step 1 of the module docstring)."""
    if url.startswith("altadb:///"):
        return f"{base.rstrip('/')}/{url[len('altadb:///') :]}"
    if url.startswith("altadb://"):
        return "https://" + url[len("altadb://") :]
    raise ValueError(f"not an altadb:// URL: {url[:40]}")


@dataclass(frozen=True, kw_only=True, slots=True)
class AltaInstance:
    """One DICOM instance of an AltaDB series: its header (DICOM JSON), transfer syntax and
    the local files of its frames, in frame order."""

    header: dict[str, Any]
    transfer_syntax: str
    frames: tuple[Path, ...]


def _json(transport: Transport, url: str, path: Path, what: str) -> Any:
    transport.download(url, path, operation=f"altadb GET {what}")
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:
        raise PlatformError(
            f"altadb GET {what}: the answer is not JSON", operation="altadb GET"
        ) from exc


def download_series(transport: Transport, url: str, folder: Path) -> list[AltaInstance]:
    """Fetch one series behind an ``altadb:`` URL into ``folder``; its instances in order.

    Raises :class:`~autolabel.errors.ImageError` when the manifest or the metadata lacks
    what the SDK reads, and the transport's errors for failed transfers (retried first).
    """
    folder.mkdir(parents=True, exist_ok=True)
    manifest = _json(
        transport, resolve(url, api_base(transport.endpoint)), folder / "manifest.json", "manifest"
    )
    try:
        frame_urls = {str(f["id"]): str(f["path"]) for f in manifest.get("imageFrames") or []}
        metadata = _json(transport, str(manifest["metaData"]), folder / "metadata.json", "metadata")
        instances = list(metadata["instances"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ImageError(f"AltaDB series {folder.name}: the manifest lacks {exc}") from exc
    out = []
    for n, instance in enumerate(instances):
        try:
            frame_ids = [str(f["id"]) for f in instance["frames"]]
            syntax = str(instance["frames"][0]["metaData"]["00020010"]["Value"][0])
            urls = [frame_urls[i] for i in frame_ids]
        except (KeyError, IndexError, TypeError) as exc:
            raise ImageError(
                f"AltaDB series {folder.name}, instance {n}: no {exc} in its metadata"
            ) from exc
        frames = tuple(
            transport.download(u, folder / f"{n:05d}-{k:04d}.frame", operation="altadb GET frame")
            for k, u in enumerate(urls)
        )
        out.append(
            AltaInstance(header=dict(instance["metaData"]), transfer_syntax=syntax, frames=frames)
        )
    return out
