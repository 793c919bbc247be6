"""Datasets (AltaDB) series in the emulator, served as redbrick-sdk 2.35.4 expects them.

A task of a Datasets-backed project has one item per series, an ``altadb:`` URL (the SDK
tells them by that prefix: ``redbrick/utils/files.py`` ``is_altadb_item``). Stored here:

* ``PREFIX/metadata.json``: ``{"instances": [{"metaData": DICOM JSON header, "frames":
  [{"id", "metaData": {"00020010": {"vr": "UI", "Value": [transfer syntax]}}}]}]}``;
* ``PREFIX/frames/ID``: one RLE Lossless frame each.

``presignItems`` answers such an item with a manifest (written afresh, so its URLs are
signed and point at this server) ``{"metaData": URL, "imageFrames": [{"id", "path": URL}]}``
behind an ``altadb:///`` URL: the form ``redbrick/utils/altadb.py`` ``save_dicom_series``
resolves against the API's base URL. (The ``altadb://HOST/`` form means ``https://HOST/``,
and the emulator serves plain HTTP.)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path

from autolabel.emulator.storage import BlobStore

ITEM_SCHEME = "altadb://"


def is_item(item: str) -> bool:
    """True for an AltaDB series item."""
    return item.startswith("altadb:")


def store_series(blobs: BlobStore, prefix: str, files: Sequence[Path]) -> str:
    """Store the DICOM ``files`` of one series under ``prefix``; return the series' item."""
    from autolabel.imaging import to_altadb_instance

    instances = []
    for path in files:
        header, syntax, frames = to_altadb_instance(path)
        entries = []
        for frame in frames:
            frame_id = str(uuid.uuid4())
            blobs.write(
                f"{prefix}/frames/{frame_id}", frame,
                content_type="application/octet-stream", encoding=None,
            )  # fmt: skip
            entries.append(
                {"id": frame_id, "metaData": {"00020010": {"vr": "UI", "Value": [syntax]}}}
            )
        instances.append({"metaData": header, "frames": entries})
    body = json.dumps({"instances": instances}).encode()
    blobs.write(f"{prefix}/metadata.json", body, content_type="application/json", encoding=None)
    return ITEM_SCHEME + prefix


def series_prefix(item: str) -> str:
    """The storage prefix of a series item ("" when it is not one of ours)."""
    return item[len(ITEM_SCHEME) :] if item.startswith(ITEM_SCHEME) else ""


def presign(blobs: BlobStore, base_url: str, item: str) -> str | None:
    """The ``altadb:///`` manifest URL of a series item, or None when it is not stored."""
    prefix = series_prefix(item)
    if not prefix or not blobs.exists(f"{prefix}/metadata.json"):
        return None
    metadata = json.loads(blobs.read(f"{prefix}/metadata.json")[0])
    frame_ids = [f["id"] for instance in metadata["instances"] for f in instance["frames"]]
    manifest = {
        "metaData": blobs.presign(base_url, f"{prefix}/metadata.json", "GET"),
        "imageFrames": [
            {"id": i, "path": blobs.presign(base_url, f"{prefix}/frames/{i}", "GET")}
            for i in frame_ids
        ],
    }
    key = f"{prefix}/manifest.json"
    blobs.write(key, json.dumps(manifest).encode(), content_type="application/json", encoding=None)
    url = blobs.presign(base_url, key, "GET")
    return "altadb:///" + url.removeprefix(base_url.rstrip("/") + "/")
