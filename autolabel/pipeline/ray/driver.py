"""The Ray driver: hands tasks to actors, records every state change, authorises each write.

The driver is the one writer of record. It alone holds the ledger (through the same
:class:`~autolabel.pipeline.book.RunBook` as the local run), and an actor writes a task to
RedBrick only when handed a :class:`~autolabel.pipeline.flow.WriteClaim`, which the task's
flow issues *after* committing its ``writing`` intent. Every outcome is the flow's decision
(:class:`~autolabel.pipeline.flow.TaskFlow`); the driver only schedules. So a ``kill -9`` of the driver
or of any actor at any moment leaves each write either recorded, not sent, or in doubt --
and in-doubt writes are settled by re-reading the task, at the start of the next run or,
for a lost actor, at once.

Scheduling:

* the task listing is streamed: the next task is pulled only when an actor has a free
  slot (``in_flight`` per actor), so the driver holds at most ``actors * in_flight``
  tasks, whatever the project's size;
* a lost actor (process killed, out of memory, node gone) is replaced, and each task it
  held is handed to another actor. A task whose write was in flight is first left
  ``in_doubt_grace_s`` for that write to land, then re-read: landed, it is recorded as
  written; otherwise it is handed on with the labels marker of its first fetch, so that
  the guard before the next write still recognises a late landing and never repeats it.
  A task whose actor dies twice is recorded as failed
  (:class:`~autolabel.errors.WorkerLostError`);
* ``stop`` (Ctrl-C) stops handing out tasks; the tasks in hand finish; tasks waiting to
  be handed again are recorded ``queued`` (not started).
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from autolabel.errors import AutolabelError, ConfigError, WorkerLostError
from autolabel.ledger import ModelKey
from autolabel.pipeline.book import RunBook
from autolabel.pipeline.engine import EngineStats, StageStats
from autolabel.pipeline.flow import TaskFlow
from autolabel.pipeline.options import RunOptions
from autolabel.pipeline.ray.cluster import ActorPlan, RayOptions, spawn_worker
from autolabel.pipeline.ray.messages import (
    Prepared,
    Sent,
    TaskError,
    WorkerInfo,
)
from autolabel.pipeline.summary import TaskOutcome, WorkerStats
from autolabel.redbrick import Task
from autolabel.settings import ConnectionSettings

#: How often the driver looks at its stop event while waiting on actors.
_POLL_S = 0.25


@dataclass
class _Job:
    """One task on its way through the actors."""

    flow: TaskFlow
    deaths: list[str] = field(default_factory=list)
    lost_on: _Slot | None = None
    lost_reason: str = ""
    settle_at: float = 0.0


@dataclass
class _Slot:
    """One actor and the calls it has in flight (``ref -> (kind, job)``)."""

    name: str
    actor: Any
    stats: WorkerStats
    started: float = field(default_factory=time.perf_counter)
    info: WorkerInfo | None = None
    calls: dict[Any, tuple[str, _Job | None]] = field(default_factory=dict)


class RayDriver:
    """Starts the actors of one run and drives its tasks through them."""

    def __init__(
        self,
        ray: Any,
        plan: ActorPlan,
        options: RayOptions,
        run_options: RunOptions,
        model: str,
        connection: ConnectionSettings,
        prefix: str,
    ) -> None:
        self.ray = ray
        self.plan = plan
        self.options = options
        self.run_options = run_options
        self.model = model
        self._connection = connection
        self.prefix = prefix
        self.slots: list[_Slot] = []
        self.retired: list[_Slot] = []
        self.pending: collections.deque[_Job] = collections.deque()
        self.doubtful: list[_Job] = []
        self.key: ModelKey | None = None
        self._owner: dict[Any, _Slot] = {}
        self._spawned = 0
        self._restarts = 0
        self._max_restarts = (
            options.max_restarts if options.max_restarts is not None else 2 * plan.actors
        )
        self._source: Iterator[Task] | None = None
        self._exhausted = False
        self._book: RunBook | None = None

    # -- actors -------------------------------------------------------------------------

    def start(self) -> ModelKey:
        """Start every actor and wait until it has loaded the model; return the model key.

        Raises the actor's own error when one cannot open the project or load the model,
        and :class:`ConfigError` when no actor starts in time or actors disagree on the
        model (different files on different nodes).
        """
        for _ in range(self.plan.actors):
            self._spawn()
        refs = list(self._owner)
        ready, late = self.ray.wait(
            refs, num_returns=len(refs), timeout=self.options.start_timeout_s
        )
        for ref in ready:
            self._opened(self._owner.pop(ref), ref)
        for ref in late:
            slot = self._owner.pop(ref)
            self._retire(slot, "did not start in time")
        if not self.slots:
            raise ConfigError(
                f"no Ray actor started within {self.options.start_timeout_s:.0f} s; does the "
                f"cluster have {self.plan.num_cpus} CPU(s) and {self.plan.num_gpus} GPU(s) free "
                "per actor?"
            )
        assert self.key is not None
        return self.key

    def _spawn(self) -> _Slot:
        self._spawned += 1
        name = f"{self.prefix}-{self._spawned}"
        actor = spawn_worker(
            self.ray, self.plan, name, self.model, self.run_options, self.options.in_flight
        )
        slot = _Slot(name, actor, WorkerStats(name=name, node="", device=self.plan.device))
        self.slots.append(slot)
        ref = actor.open.remote(self._connection)
        slot.calls[ref] = ("open", None)
        self._owner[ref] = slot
        return slot

    def _opened(self, slot: _Slot, ref: Any) -> None:
        slot.calls.pop(ref, None)
        try:
            info: WorkerInfo = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, AutolabelError):
                raise cause from None
            raise ConfigError(f"Ray actor {slot.name} could not start: {exc}") from None
        except self.ray.exceptions.RayError as exc:
            self._retire(slot, _why(exc))
            self._replace()
            return
        if self.key is not None and info.model != self.key:
            raise ConfigError(
                f"Ray actor {slot.name} on {info.node} loaded {info.model}, others {self.key}: "
                "install the same model files on every node"
            )
        self.key = info.model
        slot.info = info
        slot.stats.node, slot.stats.device = info.node, info.device
        slot.started = time.perf_counter()

    def _retire(self, slot: _Slot, reason: str) -> None:
        if slot in self.slots:
            self.slots.remove(slot)
            self.retired.append(slot)
        slot.stats.died = reason
        slot.stats.alive_s = time.perf_counter() - slot.started
        for ref in slot.calls:
            self._owner.pop(ref, None)
        with contextlib.suppress(Exception):  # already gone
            self.ray.kill(slot.actor, no_restart=True)

    def _replace(self) -> None:
        if self._restarts < self._max_restarts:
            self._restarts += 1
            self._spawn()

    def close(self) -> None:
        """Stop every actor that is still up."""
        closing = [slot.actor.close.remote() for slot in self.slots if slot.info is not None]
        if closing:
            self.ray.wait(closing, num_returns=len(closing), timeout=10)
        for slot in list(self.slots):
            slot.stats.alive_s = time.perf_counter() - slot.started
            with contextlib.suppress(Exception):
                self.ray.kill(slot.actor, no_restart=True)

    def worker_stats(self) -> list[WorkerStats]:
        """Per-actor statistics, in the order the actors were started."""
        slots = sorted(self.retired + self.slots, key=lambda s: int(s.name.rsplit("-", 1)[1]))
        return [s.stats for s in slots]

    # -- the run ------------------------------------------------------------------------

    @property
    def book(self) -> RunBook:
        """The run's books (bound once the actors have started)."""
        if self._book is None:
            raise RuntimeError("RayDriver.book is bound after start()")
        return self._book

    @book.setter
    def book(self, book: RunBook) -> None:
        self._book = book

    @property
    def workers(self) -> list[WorkerStats]:
        """Per-actor statistics, in the order the actors were started."""
        return self.worker_stats()

    def run(self, tasks: Iterator[Task]) -> EngineStats:
        """Run ``tasks`` (streamed) through the actors until done or ``stop`` is set."""
        book = self.book
        self._source = tasks
        while True:
            if not book.stop.is_set():
                self._settle_doubtful()
            self._feed()
            if not any(kind != "open" for s in self.slots for kind, _ in s.calls.values()):
                idle = self._exhausted and not self.pending and not self.doubtful
                if book.stop.is_set() or idle:
                    break
                if not self._owner and not self.doubtful:
                    raise WorkerLostError(
                        f"no Ray actor left ({self._restarts} replaced); "
                        f"{len(self.pending)} task(s) not done -- see the ledger"
                    )
            if not self._owner:
                time.sleep(_POLL_S)
                continue
            ready, _ = self.ray.wait(list(self._owner), num_returns=1, timeout=_POLL_S)
            for ref in ready:
                self._collect(ref)
        while self.pending:  # taken or handed back, not started: the run was stopped
            self.pending.popleft().flow.not_started()
        return _stage_stats(book, len(self.slots))

    def _feed(self) -> None:
        """Hand tasks to actors with a free slot (streams the listing: pull on demand).

        A task that was on a lost actor is a suspect (it may be what killed it): it is
        handed only to an idle actor, which gets nothing else while it holds it, so that a
        second loss is that task's own doing and an innocent neighbour is never blamed.
        """
        while not self.book.stop.is_set():
            free = [
                s
                for s in self.slots
                if s.info is not None
                and len(s.calls) < self.options.in_flight
                and not _holds_suspect(s)
            ]
            job = self._peek_job() if free else None
            if job is None:
                return
            if job.deaths:
                free = [s for s in free if not s.calls]
                if not free:
                    return
            self.pending.popleft()
            slot = min(free, key=lambda s: len(s.calls))
            ref = slot.actor.prepare.remote(job.flow.task)
            slot.calls[ref] = ("prepare", job)
            self._owner[ref] = slot

    def _peek_job(self) -> _Job | None:
        """The next task to hand out (re-queued ones first), pulled from the listing."""
        if not self.pending and not self._exhausted and self._source is not None:
            task = next(self._source, None)
            if task is None:
                self._exhausted = True
            else:
                self.pending.append(_Job(self.book.start(task)))
        return self.pending[0] if self.pending else None

    def _collect(self, ref: Any) -> None:
        slot = self._owner.pop(ref)
        kind, job = slot.calls.pop(ref)
        if kind == "open":
            self._opened(slot, ref)
            return
        assert job is not None
        try:
            value = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # the call itself broke (not the task)
            self._end(slot, job.flow.failed(kind, exc))
            return
        except self.ray.exceptions.RayError as exc:  # the actor is gone
            self._lost(slot, _why(exc), [(kind, job)])
            return
        if kind == "prepare":
            self._prepared(slot, job, value)
        else:
            self._sent(slot, job, value)

    def _prepared(self, slot: _Slot, job: _Job, p: Prepared) -> None:
        flow = job.flow
        if p.fetch is not None:
            flow.fetched(p.fetch)
        if p.infer_s is not None:
            flow.predicted(p.infer_s, p.device_events)
        if p.error is not None or p.converted is None:
            error = p.error.rebuild() if p.error else RuntimeError("no conversion returned")
            self._end(slot, flow.failed(p.error.phase if p.error else "ray", error))
            return
        claim = flow.converted(p.converted)  # the intent is committed before the actor sends
        if claim is None:
            assert flow.outcome is not None
            self._end(slot, flow.outcome)
            return
        ref = slot.actor.send.remote(claim, p.converted.entries)
        slot.calls[ref] = ("send", job)
        self._owner[ref] = slot

    def _sent(self, slot: _Slot, job: _Job, value: Sent | TaskError) -> None:
        if isinstance(value, Sent):
            self._end(slot, job.flow.written(value.seconds, value.note))
        else:
            self._end(slot, job.flow.failed("write", value.rebuild()))

    @staticmethod
    def _end(slot: _Slot, outcome: TaskOutcome) -> None:
        """Count a task that ended for the actor that held it."""
        outcome.worker = slot.name
        slot.stats.tasks += 1
        slot.stats.busy_s += sum(outcome.seconds.values())
        slot.stats.failed += outcome.status == "failed"

    def _lost(self, slot: _Slot, reason: str, first: list[tuple[str, _Job | None]]) -> None:
        """An actor died: settle or re-queue every task it held, then replace it."""
        held = first + list(slot.calls.values())
        self._retire(slot, reason)
        slot.calls.clear()
        for kind, job in held:
            if kind != "open" and job is not None:
                self._rescue(slot, kind, job, reason)
        self._replace()

    def _rescue(self, slot: _Slot, kind: str, job: _Job, reason: str) -> None:
        job.deaths.append(slot.name)
        job.lost_on, job.lost_reason = slot, reason
        if kind == "send" and job.flow.claim is not None:
            # The write may still land: settle it after the grace period, by re-reading.
            job.flow.lost_write()
            job.settle_at = time.monotonic() + self.options.in_doubt_grace_s
            self.doubtful.append(job)
            return
        self._requeue(job)

    def _settle_doubtful(self) -> None:
        """Writes a lost actor left in doubt, once their grace period is over: landed ones
        are recorded, the others handed on (with the marker the next write must find)."""
        now = time.monotonic()
        for job in [j for j in self.doubtful if j.settle_at <= now]:
            self.doubtful.remove(job)
            assert job.lost_on is not None
            landed = job.flow.settle_lost_write()
            if landed is not None:
                self._end(job.lost_on, landed)
                continue
            self._requeue(job)

    def _requeue(self, job: _Job) -> None:
        """Hand the task of a lost actor to another one, or fail it after two losses."""
        assert job.lost_on is not None
        job.lost_on.stats.requeued.append(job.flow.task.task_id)
        if len(job.deaths) < 2:
            self.pending.appendleft(job)
            return
        error = WorkerLostError(
            f"the actors running this task died {len(job.deaths)} times "
            f"({', '.join(job.deaths)}); last: {job.lost_reason}"
        )
        self._end(job.lost_on, job.flow.failed("ray", error))


def _holds_suspect(slot: _Slot) -> bool:
    return any(job is not None and job.deaths for _, job in slot.calls.values())


def _why(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"


def _stage_stats(book: RunBook, actors: int) -> EngineStats:
    """Per-stage statistics like the local engine's, from the tasks' recorded seconds."""
    stages = []
    for name, keys in (
        ("fetch", ("fetch",)),
        ("infer", ("infer",)),
        ("write", ("convert", "write")),
    ):
        stats = StageStats(name, actors)
        for outcome in book.outcomes:
            seconds = [outcome.seconds[k] for k in keys if k in outcome.seconds]
            if seconds:
                stats.started += 1
                stats.busy_s += sum(seconds)
            if outcome.status == "failed" and outcome.phase == name:
                stats.failed += 1
        stages.append(stats)
    return EngineStats(stages, wall_s=book.elapsed_s, fed=len(book.outcomes))
