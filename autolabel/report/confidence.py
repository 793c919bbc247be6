"""The report's confidence parts: a task's confidence per category, and a run's routes.

They read what the ledger recorded at the end of a task (``detail["confidence"]``,
``route``, ``route_reason``, ``dropped``, ``priority``; see
:mod:`autolabel.pipeline.routing`). A task of a model without probabilities says "no
probabilities" -- never a number; a ledger older than confidence says nothing.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

from autolabel.ledger import TaskEvent

#: How each route reads in the report.
ROUTES = {
    "finalize": "submitted: every category reached --finalize-above",
    "draft": "draft: below --finalize-above",
}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def confidence_table(detail: Mapping[str, Any]) -> str:
    """The per-category confidence table of one task (empty when none was recorded)."""
    if "confidence" not in detail:
        return ""
    scores = detail.get("confidence")
    if not isinstance(scores, Mapping):
        return '<p class="missing">Confidence: no probabilities (this model gives none).</p>'
    dropped = set(detail.get("dropped") or [])
    rows = ""
    for category, value in sorted(scores.items()):
        if not isinstance(value, Mapping):
            continue
        entropy = value.get("entropy")
        rows += (
            f"<tr><td>{_e(category)}</td><td class=n>{float(value['confidence']):.3f}</td>"
            f"<td class=n>{'—' if entropy is None else f'{float(entropy):.3f}'}</td>"
            f"<td>{'dropped (--drop-below)' if category in dropped else ''}</td></tr>"
        )
    return (
        "<table><tr><th>category</th><th class=n>confidence</th><th class=n>entropy</th>"
        f"<th></th></tr>{rows}</table>"
    )


def route_line(detail: Mapping[str, Any]) -> str:
    """The route a task took, its reason and the priority set (empty without routing)."""
    route = str(detail.get("route") or "")
    priority = detail.get("priority")
    parts = []
    if route:
        parts.append(f"route <b>{_e(ROUTES.get(route, route))}</b>")
    if detail.get("route_reason"):
        parts.append(_e(detail["route_reason"]))
    if isinstance(priority, int | float):
        parts.append(f"priority <b>{float(priority):.3f}</b>")
    return f'<div class="files">{" · ".join(parts)}</div>' if parts else ""


def route_chips(tasks: Iterable[TaskEvent]) -> str:
    """One chip per route over a run's tasks (empty when the run did not route)."""
    counts: dict[str, int] = {}
    for event in tasks:
        for key in (event.detail.get("route"), "dropped" if event.detail.get("dropped") else None):
            if key:
                counts[str(key)] = counts.get(str(key), 0) + 1
    names = {**ROUTES, "dropped": "with a category dropped"}
    return "".join(
        f'<span class="chip"><b>{n}</b>{_e(names.get(k, k))}</span>'
        for k, n in sorted(counts.items())
    )
