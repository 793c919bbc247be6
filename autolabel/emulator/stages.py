"""A project's stages as the server sees them: the kinds of stage (bricks), where Ground
Truth is, which stage a name means, consensus, and the share of tasks a sampled review stage
takes. The rules that use them are in :mod:`autolabel.emulator.workflow`; a refusal of any
of them is a :class:`RuleViolation`."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from autolabel.emulator.entities import (
    ProjectRecord,
)

GROUND_TRUTH = "END"


ARCHIVED = "ARCHIVED"


LABEL_BRICK = "manual-labeling"


REVIEW_BRICK = "expert-review"


OUTPUT_BRICK = "labelset-output"


FEEDBACK_BRICK = "feedback"


INPUT_BRICK = "labelset-input"


class RuleViolation(Exception):
    """A request breaks a server rule; the message is what the API answers."""


def stage_config(stage: dict[str, Any]) -> dict[str, Any]:
    """A stage's ``stageConfig`` as a dict (it is stored as a JSON string or an object)."""
    config = stage.get("stageConfig") or {}
    parsed = json.loads(config) if isinstance(config, str) else config
    return parsed if isinstance(parsed, dict) else {}


def stage_named(project: ProjectRecord, name: str) -> dict[str, Any] | None:
    """The stage called ``name``, or None."""
    return next((s for s in project.stages if s["stageName"] == name), None)


def is_consensus_stage(project: ProjectRecord, stage_name: str) -> bool:
    """True for a Label stage whose config has ``isConsensusLabel``: several labelers each
    label the task in their own sub-task (redbrick/stage/label.py reads ``isConsensusLabel``
    into ``is_consensus_label``)."""
    stage = stage_named(project, stage_name)
    return bool(stage and stage_config(stage).get("isConsensusLabel"))


def consensus_enabled(project: ProjectRecord) -> bool:
    """``consensusSettings.enabled``: the project has a consensus stage (what
    redbrick/project.py reads as ``is_consensus_enabled``)."""
    return any(is_consensus_stage(project, s["stageName"]) for s in project.stages)


def stages_of(project: ProjectRecord, brick: str) -> list[str]:
    """Names of the stages with the given brick, in pipeline order."""
    return [s["stageName"] for s in project.stages if s["brickName"] == brick]


def is_ground_truth(project: ProjectRecord, name: str | None) -> bool:
    """True for ``END`` and the output stage's name (both mean Ground Truth, §2.1)."""
    return name == GROUND_TRUTH or (name is not None and name in stages_of(project, OUTPUT_BRICK))


def first_label_stage(project: ProjectRecord) -> str:
    """Where new tasks start: the input stage's next stage, else the first label stage."""
    for stage in project.stages:
        if stage["brickName"] == INPUT_BRICK:
            return resolve_stage(project, stage["routing"].get("nextStageName"))
    labels = stages_of(project, LABEL_BRICK)
    if not labels:
        raise RuleViolation(f"Project {project.project_id} has no label stage")
    return labels[0]


def resolve_stage(project: ProjectRecord, name: str | None) -> str:
    """The stage a task actually lands in when routed to ``name``.

    Feedback stages forward to their ``feedbackStageName``; the output stage, ``Output``
    and ``END`` are Ground Truth.
    """
    for _ in range(len(project.stages) + 1):
        if name is None or is_ground_truth(project, name) or name == "Output":
            return GROUND_TRUTH
        stage = stage_named(project, name)
        if stage is None or stage["brickName"] != FEEDBACK_BRICK:
            return name
        name = stage["routing"].get("feedbackStageName")
    raise RuleViolation(f"Project {project.project_id} has a routing loop at {name}")


def _sampled(task_id: str, stage_name: str, share: float) -> bool:
    """Whether the task is in the reviewed ``share`` of a stage (stable per task and stage)."""
    digest = hashlib.sha256(f"{task_id}/{stage_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share


def skip_unsampled_reviews(project: ProjectRecord, task_id: str, target: str) -> str:
    """The stage a task lands in when review stages sample only part of their tasks.

    Follows redbrick/stage/review.py: ``reviewPercent`` is the share of tasks "in [0, 1]
    that will be sampled for review" (default 1). A task outside the sample goes on along
    the stage's ``passed`` route.
    """
    for _ in range(len(project.stages) + 1):
        stage = stage_named(project, target)
        if stage is None or stage["brickName"] != REVIEW_BRICK:
            return target
        share = stage_config(stage).get("reviewPercent")
        if share is None or float(share) >= 1 or _sampled(task_id, target, float(share)):
            return target
        target = resolve_stage(project, (stage.get("routing") or {}).get("passed"))
    return target
