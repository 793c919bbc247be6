"""Reaching Ray and placing actors: the only module of autolabel that imports ``ray``
(with :mod:`autolabel.pipeline.ray.driver`, which waits on its futures).

* :func:`ray_session` joins a running Ray (``ray.is_initialized()``), an existing cluster
  (``address="auto"`` or ``"ray://host:port"``), or starts a local instance (no address)
  without dashboard and without usage statistics; it shuts Ray down again only if it
  started or joined it here.
* :func:`plan_actors` decides how many actors of which shape: one per GPU
  (``num_gpus=1``) when the cluster has GPUs, else CPU actors of ``cpus_per_actor``.
* :func:`spawn_worker` creates one :class:`~autolabel.pipeline.ray.worker.TaskWorker` actor.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from autolabel.errors import ConfigError
from autolabel.pipeline.options import RunOptions


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    """How a run spreads over Ray.

    * ``address``: ``None`` starts a local Ray instance (or uses the one this process
      already joined); ``"auto"`` or ``"ray://host:port"`` joins an existing cluster.
    * ``actors``: how many actors (default: one per GPU of the cluster, else
      ``CPUs // cpus_per_actor``).
    * ``cpus_per_actor``: CPUs each actor reserves (download, decode, conversion; and the
      model on a CPU actor). ``gpus_per_actor``: default 1 when the cluster has GPUs, else 0.
    * ``in_flight``: tasks handed to one actor at a time (its back-pressure, >= 1).
    * ``start_timeout_s``: how long actors may take to start and load the model.
    * ``max_restarts``: lost actors replaced in one run (default: twice ``actors``).
    * ``in_doubt_grace_s``: how long a write sent by a lost actor may still take to land
      on RedBrick before the driver re-reads the task and hands it on.
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None
    in_flight: int = 2
    start_timeout_s: float = 300.0
    max_restarts: int | None = None
    in_doubt_grace_s: float = 10.0

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"ray actors must be at least 1, got {self.actors}")
        if self.cpus_per_actor <= 0:
            raise ConfigError(f"ray CPUs per actor must be positive, got {self.cpus_per_actor}")
        if self.in_flight < 1:
            raise ConfigError(f"ray in-flight tasks per actor must be >= 1, got {self.in_flight}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ActorPlan:
    """How many actors, and the resources and device of each."""

    actors: int
    num_cpus: float
    num_gpus: float
    device: str


def _ray() -> Any:
    # Usage statistics stay off unless the user turned them on; set before Ray reads it.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray needs Ray: pip install 'autolabel[ray]' (or 'ray>=2.9')") from exc
    return ray


@contextmanager
def preserved_environment() -> Iterator[None]:
    """Put ``os.environ`` back as it was when the block ends.

    ``ray.init`` leaves variables behind after ``ray.shutdown`` (Ray 2.60 sets
    ``RAY_AUTH_MODE=token``); a process started later inherits them and its own local Ray
    then fails to start for want of a token. Starting Ray inside this block keeps the
    process environment the user had.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray, joined or started for the duration of the block (see the module docstring)."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    with preserved_environment():
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = address or "a local instance"
            raise ConfigError(f"cannot start or reach Ray ({where}): {exc}") from exc
        try:
            yield ray
        finally:
            ray.shutdown()


def plan_actors(ray: Any, options: RayOptions, device: str) -> ActorPlan:
    """The actors to start on the cluster ``ray`` is connected to."""
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0.0))
    cpus = float(resources.get("CPU", 0.0))
    per_gpu = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if gpus else 0)
    if device == "cpu":
        per_gpu = 0.0
    if per_gpu > 0:
        count = options.actors or max(1, int(gpus // per_gpu))
        return ActorPlan(
            actors=count,
            num_cpus=options.cpus_per_actor,
            num_gpus=per_gpu,
            # Ray sets CUDA_VISIBLE_DEVICES per actor: its GPU is always "cuda" (cuda:0).
            device="cuda",
        )
    if device.startswith("cuda"):
        raise ConfigError(f"device {device!r} asked for, but the Ray cluster has no GPU")
    count = options.actors or max(1, int(cpus // options.cpus_per_actor))
    return ActorPlan(actors=count, num_cpus=options.cpus_per_actor, num_gpus=0.0, device="cpu")


def spawn_worker(
    ray: Any, plan: ActorPlan, name: str, model: str, options: RunOptions, in_flight: int
) -> Any:
    """Create one actor (not yet opened). Ray never restarts it: the driver replaces lost
    actors itself, so that it knows which tasks each one held."""
    from autolabel.pipeline.ray.worker import TaskWorker

    actor_class = ray.remote(TaskWorker)
    return actor_class.options(
        name=name,
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        max_concurrency=in_flight,
        max_restarts=0,
        max_task_retries=0,
    ).remote(name, model, plan.device, options)
