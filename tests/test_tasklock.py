"""The machine-wide task write lock: one holder per task across threads and processes,
bounded waits with a clear message, a private lock folder."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from autolabel.errors import ConfigError, TaskWriteBusy
from autolabel.pipeline.tasklock import FOLDER_NAME, lock_folder, task_lock_key, task_write_lock

KEY = task_lock_key("http://127.0.0.1:1/", "org", "project", "task-1")

HOLDER = """
import sys
from autolabel.pipeline.tasklock import task_write_lock
with task_write_lock(sys.argv[1], "task-1", wait_s=0):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture(autouse=True)
def _private_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))


def test_two_threads_take_turns_on_one_task() -> None:
    held, release, done = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with task_write_lock(KEY, "task-1", wait_s=0):
            held.set()
            release.wait(30)
        done.set()

    worker = threading.Thread(target=hold)
    worker.start()
    try:
        assert held.wait(30)
        busy = "another autolabel run on this machine is writing task task-1"
        with pytest.raises(TaskWriteBusy, match=busy), task_write_lock(KEY, "task-1", wait_s=0.2):
            pass
        other = task_lock_key("http://127.0.0.1:1/", "org", "project", "task-2")
        with task_write_lock(other, "task-2", wait_s=0):  # another task is not blocked
            pass
    finally:
        release.set()
        worker.join(30)
    assert done.is_set()
    with task_write_lock(KEY, "task-1", wait_s=0):  # free once the holder left
        pass


def test_a_waiter_gets_the_lock_when_the_holder_releases_it() -> None:
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with task_write_lock(KEY, "task-1", wait_s=0):
            held.set()
            release.wait(30)

    worker = threading.Thread(target=hold)
    worker.start()
    assert held.wait(30)
    threading.Timer(0.3, release.set).start()
    with task_write_lock(KEY, "task-1", wait_s=30):
        assert release.is_set()  # not before the holder let go
    worker.join(30)


def test_two_processes_exclude_each_other_and_the_lock_dies_with_the_holder() -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, KEY],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(TaskWriteBusy, match="task-1"),
            task_write_lock(KEY, "task-1", wait_s=0.2),
        ):
            pass
    finally:
        holder.kill()  # killed while holding it: no stale lock remains
        holder.wait(30)
    with task_write_lock(KEY, "task-1", wait_s=0):
        pass
    assert (lock_folder() / f"{KEY}.lock").stat().st_size == 0  # left in place, empty


def test_one_thread_never_holds_two_task_locks() -> None:
    other = task_lock_key("http://127.0.0.1:1/", "org", "project", "task-2")
    with (
        task_write_lock(KEY, "task-1", wait_s=0),
        pytest.raises(RuntimeError, match="already holds"),
        task_write_lock(other, "task-2", wait_s=0),
    ):
        pass
    with task_write_lock(other, "task-2", wait_s=0):  # released, so taken now
        pass


def test_keys_tell_servers_orgs_projects_and_tasks_apart() -> None:
    parts = ("http://127.0.0.1:1", "org", "project", "task-1")
    assert task_lock_key(*parts) == task_lock_key("HTTP://127.0.0.1:1/", *parts[1:])
    others = [
        ("http://127.0.0.1:2", "org", "project", "task-1"),
        ("http://127.0.0.1:1", "org2", "project", "task-1"),
        ("http://127.0.0.1:1", "org", "project2", "task-1"),
        ("http://127.0.0.1:1", "org", "project", "TASK-1"),
    ]
    assert len({task_lock_key(*parts), *(task_lock_key(*o) for o in others)}) == 5


def test_the_lock_folder_is_private_and_a_symlink_is_refused(tmp_path: Path) -> None:
    folder = lock_folder()
    assert folder == tmp_path / "runtime" / FOLDER_NAME
    assert folder.stat().st_mode & 0o777 == 0o700
    folder.rmdir()
    (tmp_path / "elsewhere").mkdir()
    folder.symlink_to(tmp_path / "elsewhere")
    with (
        pytest.raises(ConfigError, match="not a plain folder"),
        task_write_lock(KEY, "task-1", wait_s=0),
    ):
        pass
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a folder to another user")
def test_a_lock_folder_of_another_user_is_refused() -> None:
    folder = lock_folder()
    os.chown(folder, 12345, 12345)
    with pytest.raises(ConfigError, match="belongs to another user"):
        lock_folder()
