"""Preview PNGs off a run's critical path: one worker thread renders them while the
write phase goes on with the task's upload and commit (issue 16: a preview took as long as
the whole write).

:class:`PreviewWorker` keeps at most ``depth`` previews waiting (each holds its task's
volume and label map until rendered), so a slow renderer holds the write phase back rather
than filling memory. A preview that fails is logged and left out: the report shows it as
missing, and the task's outcome does not depend on it. :meth:`PreviewWorker.drain`
returns once every preview asked for is on disk (the run calls it before it returns, so
its report finds them). A renderer that hangs cannot hang the run: a preview waiting longer
than ``stuck_after_s`` to be queued, or the drain waiting longer than that for the last
one, leaves the previews still to come out (logged), and the run goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: A preview to render: writes the PNG at its path.
Render = Callable[[], object]

#: How long a preview may hold the write phase (or the run's end) before the renderer is
#: taken for stuck and the previews still to come are left out.
STUCK_AFTER_S = 120.0


class PreviewWorker:
    """Renders previews on one daemon thread, in the order they were asked for."""

    def __init__(self, depth: int = 2, *, stuck_after_s: float = STUCK_AFTER_S) -> None:
        self._jobs: queue.Queue[tuple[Path, Render] | None] = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.stuck_after_s = stuck_after_s
        self.stuck = False

    def submit(self, path: Path, render: Render) -> None:
        """Render ``path`` with ``render()`` on the worker (waits while ``depth`` are queued,
        at most ``stuck_after_s``; a stuck renderer's previews are left out)."""
        if self.stuck:
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="autolabel-previews", daemon=True
                )
                self._thread.start()
        try:
            self._jobs.put((path, render), timeout=self.stuck_after_s)
        except queue.Full:
            self._give_up(f"preview {path} not written")

    def drain(self) -> None:
        """Wait until every submitted preview is rendered (or failed), then stop the thread;
        a renderer still busy after ``stuck_after_s`` is left behind (a daemon thread)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None or self.stuck:
            return
        try:
            self._jobs.put(None, timeout=self.stuck_after_s)
        except queue.Full:
            self._give_up("the previews still queued are not written")
            return
        thread.join(self.stuck_after_s)
        if thread.is_alive():
            self._give_up("the previews still queued are not written")

    def _give_up(self, what: str) -> None:
        self.stuck = True
        log.warning(
            "%s: a preview has been rendering for over %g s; the previews still to come are "
            "left out (the tasks' labels are not affected)",
            what,
            self.stuck_after_s,
        )

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            path, render = job
            try:
                render()
            # A preview never fails its task: it is left out. BaseException too (as the
            # engine's stages do): a renderer's SystemExit would otherwise end this thread
            # with previews still queued, and drain() would wait for them forever.
            except BaseException as exc:
                log.warning("preview %s not written: %s: %s", path, type(exc).__name__, exc)
