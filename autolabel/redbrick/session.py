"""What a session with a RedBrick project holds beside the client: who the key is
(:class:`Context`, the SDK's ``project.context``) and the local files a download of a task's
items gives (:class:`DownloadedSeries`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from autolabel.redbrick.altadb import AltaInstance
from autolabel.redbrick.client import RedBrickClient


@dataclass(frozen=True, kw_only=True, slots=True)
class DownloadedSeries:
    """The local files of one series, in the series' item order.

    A series of a Datasets (AltaDB) project comes as ``instances`` (DICOM headers and frame
    files, see :mod:`autolabel.redbrick.altadb`) with no ``paths``: the caller writes the
    DICOM files (:func:`autolabel.imaging.altadb.from_altadb_instance`). ``digests``
    spares the caller reading the files again to checksum them.
    """

    index: int
    name: str | None
    paths: tuple[Path, ...]
    instances: tuple[AltaInstance, ...] = ()
    #: The SHA-256 digest of each file of ``paths`` (as downloaded), or empty.
    digests: tuple[bytes, ...] = ()


class Context:
    """``project.context``: who the key is. ``key_id`` is fetched once, on first use."""

    def __init__(self, client: RedBrickClient) -> None:
        self.client = client
        self._key_id: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "Context()"

    @property
    def key_id(self) -> str:
        """The API key's user id (``API:<uuid>``), from the ``me`` query."""
        with self._lock:
            if self._key_id is None:
                self._key_id = self.client.current_user_id()
            return self._key_id
