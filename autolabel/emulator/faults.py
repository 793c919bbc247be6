"""Injected faults: make chosen requests fail the ways real networks and servers fail.

A fault rule (JSON or :class:`FaultRule`)::

    {"target": "putTaskAndLabelsSDK",   # GraphQL operation name or root field,
                                        # "storage:GET", "storage:PUT", "storage" or "*"
     "kind": "status",                  # status | graphql_error | field_error | delay | drop
                                        # | late_commit
     "status": 503,                     # kind=status: the HTTP status answered
     "retry_after": 2,                  # kind=status: optional Retry-After seconds
     "message": "injected",             # kind=graphql_error (and the status body)
     "delay_s": 1.5,                    # kind=delay: sleep, then answer normally
     "times": 2,                        # fire on the next N matching calls (null: forever)
     "rate": 1.0, "seed": 0,            # fire with this probability (seeded RNG)
     "entry": 0, "null_field": "datapoint"}  # kind=field_error: entry, field

``drop`` closes the connection without any response. ``field_error`` answers the request
normally, then nulls ``null_field`` of listing entry ``entry`` (the whole entry when it is
null) and adds an error with its ``path`` next to the data: a partial answer, as GraphQL
gives for a field that failed to resolve (the SDK keeps the data of such reads,
redbrick/common/client.py ``_process_json_response`` with ``raise_for_error=False``).
Several delay rules add up; of the other kinds the first matching rule that fires decides
the answer.

``late_commit`` (GraphQL only) is a gateway that gives up on a request the server goes on
with: the operation is executed ``delay_s`` seconds after it arrived, in the background,
whatever becomes of the connection, and the client is answered HTTP ``status`` at once
(504 for a gateway timeout). With ``"status": 0`` nothing is answered: the connection is
held until the commit and then closed, so the client's read timeout fires first when
``delay_s`` exceeds it. Either way the write lands after the client gave up on it.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("status", "graphql_error", "field_error", "delay", "drop", "late_commit")


@dataclass
class FaultRule:
    """One fault; ``times`` counts down as it fires (None = no limit)."""

    target: str
    kind: str = "status"
    status: int = 503
    retry_after: float | None = None
    message: str = "injected fault"
    delay_s: float = 0.0
    times: int | None = 1
    rate: float = 1.0
    seed: int = 0
    entry: int = 0
    null_field: str | None = "datapoint"
    fired: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be within [0, 1], got {self.rate}")
        if self.times is not None and self.times < 0:
            raise ValueError(f"fault times must be >= 0 or null, got {self.times}")
        self._rng = random.Random(self.seed)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> FaultRule:
        """Build a rule from its JSON form; unknown keys are an error."""
        allowed = {"target", "kind", "status", "retry_after", "message", "delay_s", "times"}
        allowed |= {"rate", "seed", "entry", "null_field"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ValueError(f"unknown fault keys: {', '.join(unknown)}")
        if "target" not in spec:
            raise ValueError("a fault needs a target (operation, root field or storage:GET/PUT)")
        return cls(**spec)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with ``fired`` (how often it has fired so far)."""
        out = asdict(self)
        out.pop("_rng")
        return out

    def matches(self, names: Iterable[str]) -> bool:
        """True when this rule targets one of ``names`` and has firings left."""
        if self.times is not None and self.times <= 0:
            return False
        return self.target == "*" or self.target in names


def load_faults(spec: str | Path | list[dict[str, Any]] | dict[str, Any]) -> list[FaultRule]:
    """Rules from JSON text, a JSON file path, a dict or a list of dicts."""
    if isinstance(spec, Path) or (
        isinstance(spec, str) and not spec.lstrip().startswith(("[", "{"))
    ):
        spec = Path(spec).read_text(encoding="utf-8")
    data = json.loads(spec) if isinstance(spec, str) else spec
    items = data if isinstance(data, list) else [data]
    return [FaultRule.from_dict(dict(item)) for item in items]


class FaultBook:
    """The active rules of one server; thread-safe."""

    def __init__(self, rules: Iterable[FaultRule] = ()) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = list(rules)

    def add(self, *rules: FaultRule) -> None:
        """Append rules (they fire after the ones already there)."""
        with self._lock:
            self._rules.extend(rules)

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[dict[str, Any]]:
        """The rules in JSON form, with their remaining ``times`` and ``fired`` counts."""
        with self._lock:
            return [rule.to_dict() for rule in self._rules]

    def draw(self, names: Iterable[str]) -> tuple[float, FaultRule | None]:
        """Decide the faults of one request: total delay, and the terminating rule if any."""
        wanted = set(names)
        delay = 0.0
        chosen: FaultRule | None = None
        with self._lock:
            for rule in self._rules:
                if not rule.matches(wanted) or (chosen is not None and rule.kind != "delay"):
                    continue
                if rule.rate < 1.0 and rule._rng.random() >= rule.rate:
                    continue
                rule.fired += 1
                if rule.times is not None:
                    rule.times -= 1
                if rule.kind == "delay":
                    delay += rule.delay_s
                else:
                    chosen = rule
        return delay, chosen


def inject_field_error(body: dict[str, Any], rule: FaultRule, root: str) -> dict[str, Any]:
    """``body`` (a GraphQL answer) with ``rule``'s field error in the listing ``root``.

    The entry ``rule.entry`` of ``data[root].entries`` loses ``rule.null_field`` (or becomes
    null) and an error with that ``path`` is added; without such an entry the root field
    itself is nulled. The rest of the data is kept."""
    data = body.get("data")
    listing = data.get(root) if isinstance(data, dict) else None
    entries = listing.get("entries") if isinstance(listing, dict) else None
    path: list[str | int] = [root]
    if isinstance(entries, list) and 0 <= rule.entry < len(entries) and entries[rule.entry]:
        path += ["entries", rule.entry]
        if rule.null_field is None:
            entries[rule.entry] = None
        else:
            entries[rule.entry][rule.null_field] = None
            path.append(rule.null_field)
    elif isinstance(data, dict):
        data[root] = None
    errors = list(body.get("errors") or [])
    errors.append({"message": rule.message, "path": path})
    return {**body, "errors": errors}
