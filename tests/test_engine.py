"""The stage engine overlaps stages, bounds memory, and turns per-job failures into data."""

from __future__ import annotations

import threading
import time

import pytest

from autolabel.pipeline.engine import Stage, StageEngine


def _sleeper(seconds: float, log: list[tuple[str, int]], name: str):  # type: ignore[no-untyped-def]
    def work(job: int) -> bool:
        time.sleep(seconds)
        log.append((name, job))
        return True

    return work


def test_stages_overlap_so_the_slowest_stage_sets_the_pace() -> None:
    log: list[tuple[str, int]] = []
    stages = [Stage(n, _sleeper(0.05, log, n)) for n in ("fetch", "infer", "write")]
    errors: list[object] = []
    engine = StageEngine(stages, on_error=lambda j, s, e: errors.append(e))
    stats = engine.run(range(8))
    # Sequential would be 8 jobs x 3 stages x 0.05 s = 1.2 s; overlapped about (8 + 2) x 0.05.
    assert stats.wall_s < 0.9
    assert [j for name, j in log if name == "write"] == list(range(8))
    assert all(s.passed == 8 for s in stats.stages)
    assert not errors


def test_jobs_in_flight_are_bounded_by_queue_depth_and_workers() -> None:
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def enter(job: int) -> bool:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        return True

    def leave(job: int) -> bool:
        nonlocal in_flight
        time.sleep(0.02)
        with lock:
            in_flight -= 1
        return True

    engine = StageEngine(
        [Stage("enter", enter), Stage("leave", leave)], on_error=lambda j, s, e: None, queue_depth=2
    )
    engine.run(range(30))
    # enter's own slot + the queue between (2) + leave's worker: at most 1 + 2 + 1 (+1 racing).
    assert peak <= 5


def test_a_failing_job_is_recorded_and_the_others_go_on() -> None:
    failures: list[tuple[int, str, str]] = []
    done: list[int] = []

    def infer(job: int) -> bool:
        if job == 3:
            raise ValueError("bad series in task 3")
        return True

    def write(job: int) -> bool:
        done.append(job)
        return job != 5  # job 5 ends early (skipped)

    engine = StageEngine(
        [Stage("infer", infer, workers=2), Stage("write", write)],
        on_error=lambda j, s, e: failures.append((j, s, str(e))),
    )
    stats = engine.run(range(8))
    assert failures == [(3, "infer", "bad series in task 3")]
    assert sorted(done) == [0, 1, 2, 4, 5, 6, 7]
    assert stats.stages[0].failed == 1 and stats.stages[1].ended_early == 1


def test_a_run_fatal_error_stops_everything_and_is_raised() -> None:
    seen: list[int] = []

    def infer(job: int) -> bool:
        seen.append(job)
        if job == 2:
            raise PermissionError("API key refused")
        time.sleep(0.01)
        return True

    def on_error(job: int, stage: str, exc: BaseException) -> None:
        raise exc  # the caller decides this error is run-fatal

    engine = StageEngine([Stage("infer", infer)], on_error=on_error, queue_depth=1)
    with pytest.raises(PermissionError, match="refused"):
        engine.run(range(1000))
    assert len(seen) < 10


def test_stop_finishes_jobs_in_hand_and_takes_no_new_ones() -> None:
    stop = threading.Event()
    finished: list[int] = []

    def write(job: int) -> bool:
        if job == 1:
            stop.set()
        time.sleep(0.01)
        finished.append(job)
        return True

    engine = StageEngine([Stage("write", write)], on_error=lambda j, s, e: None, stop=stop)
    stats = engine.run(range(100))
    assert finished == list(range(len(finished)))  # every job taken was finished, in order
    assert stats.fed < 10


@pytest.mark.parametrize("escape", [SystemExit(3), KeyboardInterrupt()])
def test_a_job_raising_systemexit_or_keyboardinterrupt_fails_alone(escape: BaseException) -> None:
    """A stage that raises SystemExit/KeyboardInterrupt (a model calling sys.exit) used to
    end its worker thread silently, and the run then waited forever for it."""
    failures: list[tuple[int, str]] = []
    done: list[int] = []

    def infer(job: int) -> bool:
        if job == 1:
            raise escape
        return True

    engine = StageEngine(
        [Stage("infer", infer), Stage("write", lambda job: done.append(job) is None)],
        on_error=lambda j, s, e: failures.append((j, type(e).__name__)),
    )
    result: list[object] = []
    runner = threading.Thread(target=lambda: result.append(engine.run(range(4))), daemon=True)
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive(), "the run hung after a job raised SystemExit"
    assert failures == [(1, type(escape).__name__)]
    assert sorted(done) == [0, 2, 3]
