"""Overlapped stages with bounded queues: the pacing engine of a run.

A run is a chain of stages (download and decode, infer, encode and write). Each stage has
its own worker threads and hands jobs to the next through a queue of ``queue_depth``
slots, so the slowest stage sets the pace, the others work ahead of it, and at most
``sum(workers + queue_depth)`` jobs are in memory at once. Threads suit this work: torch,
numpy, zlib and sockets release the GIL for the heavy parts.

Contract of a stage function: ``work(job) -> bool``. ``True`` passes the job on, ``False``
finishes it early (e.g. skipped). An exception (any ``BaseException``, ``SystemExit``
included) is handed to ``on_error(job, stage, exc)``
on the worker thread, and the run goes on with the other jobs; if ``on_error`` itself
raises, the error is run-fatal: nothing new is started, jobs in flight are dropped, and
:meth:`StageEngine.run` re-raises it once every worker has stopped.

Setting ``stop`` (e.g. from a signal handler) stops feeding new jobs; jobs already taken
finish every stage.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

J = TypeVar("J")

_DONE = object()


@dataclass(frozen=True)
class Stage(Generic[J]):
    """One step of the chain: ``work`` runs on ``workers`` threads."""

    name: str
    work: Callable[[J], bool]
    workers: int = 1

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"stage {self.name!r} needs at least one worker, got {self.workers}")


@dataclass
class StageStats:
    """What one stage did: jobs in and out, and seconds spent working (summed over workers)."""

    name: str
    workers: int
    started: int = 0
    passed: int = 0
    ended_early: int = 0
    failed: int = 0
    busy_s: float = 0.0

    @property
    def per_job_s(self) -> float:
        """Mean seconds of work per job (0 when no job ran)."""
        return self.busy_s / self.started if self.started else 0.0


@dataclass
class EngineStats:
    """Per-stage statistics of a run and its wall time."""

    stages: list[StageStats]
    wall_s: float = 0.0
    fed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class StageEngine(Generic[J]):
    """Runs jobs through ``stages`` with bounded queues between them (see module docstring)."""

    def __init__(
        self,
        stages: Sequence[Stage[J]],
        *,
        on_error: Callable[[J, str, BaseException], None],
        queue_depth: int = 2,
        stop: threading.Event | None = None,
    ) -> None:
        if not stages:
            raise ValueError("a run needs at least one stage")
        if queue_depth < 1:
            raise ValueError(f"queue_depth must be at least 1, got {queue_depth}")
        self.stages = list(stages)
        self.on_error = on_error
        self.queue_depth = queue_depth
        self.stop = stop if stop is not None else threading.Event()
        self._abort = threading.Event()
        self._fatal: list[BaseException] = []

    def run(self, jobs: Iterable[J]) -> EngineStats:
        """Feed ``jobs`` (lazily) through every stage; return once all are finished."""
        stats = EngineStats([StageStats(s.name, s.workers) for s in self.stages])
        queues: list[queue.Queue[object]] = [
            queue.Queue(maxsize=self.queue_depth) for _ in self.stages
        ]
        threads: list[threading.Thread] = []
        remaining = [s.workers for s in self.stages]
        remaining_lock = threading.Lock()

        def worker(index: int) -> None:
            stage, inbox = self.stages[index], queues[index]
            outbox = queues[index + 1] if index + 1 < len(self.stages) else None
            record = stats.stages[index]
            while True:
                item = inbox.get()
                if item is _DONE:
                    break
                if self._abort.is_set():
                    continue
                job: J = item  # type: ignore[assignment]
                began = time.perf_counter()
                try:
                    passed = stage.work(job)
                # Per-job failure, becomes data via on_error. BaseException too: a model's
                # SystemExit or KeyboardInterrupt would otherwise end this worker silently
                # and leave the next stage waiting forever (signals reach the main thread
                # only, so nothing here swallows a user's Ctrl-C).
                except BaseException as exc:
                    with stats._lock:
                        record.failed += 1
                        record.started += 1
                        record.busy_s += time.perf_counter() - began
                    self._handle_error(job, stage.name, exc)
                    continue
                with stats._lock:
                    record.started += 1
                    record.busy_s += time.perf_counter() - began
                    if passed:
                        record.passed += 1
                    else:
                        record.ended_early += 1
                if passed and outbox is not None:
                    self._put(outbox, job)
            with remaining_lock:
                remaining[index] -= 1
                last = remaining[index] == 0
            if last and outbox is not None:
                for _ in range(self.stages[index + 1].workers):
                    outbox.put(_DONE)

        for index, stage in enumerate(self.stages):
            for n in range(stage.workers):
                thread = threading.Thread(
                    target=worker, args=(index,), name=f"autolabel-{stage.name}-{n}", daemon=True
                )
                thread.start()
                threads.append(thread)

        began = time.perf_counter()
        try:
            for job in jobs:
                if self.stop.is_set() or self._abort.is_set():
                    break
                stats.fed += 1
                self._put(queues[0], job)
        except BaseException as exc:  # the job source itself failed (e.g. listing tasks)
            self._fatal.append(exc)
            self._abort.set()
        finally:
            for _ in range(self.stages[0].workers):
                queues[0].put(_DONE)
            for thread in threads:
                thread.join()
            stats.wall_s = time.perf_counter() - began
        if self._fatal:
            raise self._fatal[0]
        return stats

    def _put(self, target: queue.Queue[object], job: J) -> None:
        """Put with a timeout loop so an abort never leaves a thread blocked forever."""
        while not self._abort.is_set():
            try:
                target.put(job, timeout=0.1)
                return
            except queue.Full:
                continue

    def _handle_error(self, job: J, stage: str, exc: BaseException) -> None:
        try:
            self.on_error(job, stage, exc)
        except BaseException as fatal:
            self._fatal.append(fatal)
            self._abort.set()
