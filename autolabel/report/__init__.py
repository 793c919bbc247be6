"""The HTML report of a work folder: what each run did to each task, in one file.

:func:`build_report` reads the ledger of a work folder (never RedBrick) and returns one
self-contained HTML document; :func:`write_report` writes it atomically. For each run
(the latest by default, one with ``run_id``, or the ``runs`` newest):

* a header: mode, model (name, version, weights hash), start, duration, final status,
  the command line (without secrets, masked again for ledgers older than the masking of
  every spelling of ``--api-key``), counts per outcome, the
  time spent per stage and the predicted volume per category over all tasks;
* one card per task: its outcome (draft saved, submitted, dry run, skipped, failed -- with
  the reason or the error), the preview PNG (labels over three orthogonal planes), the
  volume of each category in millilitres, the confidence of each category (mean max-softmax
  probability in its predicted region, with entropy; "no probabilities" for a model that
  gives none) and the route it took, the seconds of each stage and the result files.

Optional review rows (:class:`ReviewRow`: a review pass's decision and Dice per category)
add a review table. Contract:

* self-contained: images are embedded as ``data:image/png;base64`` URIs, styles are
  inline, there is no script and no external reference (works offline, attachable to a
  ticket or an e-mail);
* every text that comes from the ledger, a task or a file name is HTML-escaped;
* a preview file that has gone is reported as missing, not an error;
* :class:`~autolabel.errors.LedgerError` when the folder has no ledger, ``ValueError``
  for an unknown ``run_id``.
"""

from __future__ import annotations

import base64
import html
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolabel.errors import LedgerError
from autolabel.files import atomic_file
from autolabel.ledger import Ledger, RunInfo, TaskEvent, TaskState, ledger_path
from autolabel.report.confidence import confidence_table, route_chips, route_line
from autolabel.settings.secrets import redact_argv

#: How each final state reads in the report, and its badge colour.
OUTCOMES: dict[str, tuple[str, str]] = {
    "submitted": ("submitted", "#1b7f3b"),
    "draft_saved": ("draft saved", "#1f5fbf"),
    "dry_run": ("dry run · kept locally", "#6b3fa0"),
    "skipped": ("skipped", "#a86400"),
    "failed": ("failed", "#b42318"),
    "undone": ("undone · no labels again", "#5b6576"),
}
_ENDED = frozenset(OUTCOMES)
_MODE_TITLES = {"draft": "Drafts", "final": "Submissions", "dry-run": "Dry run", "undo": "Undo"}
#: The pipeline's stages in the order they run.
STAGES: tuple[str, ...] = ("fetch", "infer", "convert", "write")

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:#1d2430;background:#f4f6f9}
main{max-width:1100px;margin:0 auto;padding:28px 20px 60px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:34px 0 10px}
h3{font-size:17px;margin:0}
.sub{color:#5b6576;margin:0 0 18px}
.card{background:#fff;border:1px solid #dde2ea;border-radius:10px;padding:18px 20px;
margin:14px 0;box-shadow:0 1px 2px rgba(16,24,40,.04)}
.row{display:flex;flex-wrap:wrap;gap:10px 26px;align-items:baseline}
.kv{color:#5b6576;font-size:13px}.kv b{color:#1d2430;font-weight:600}
.badge{display:inline-block;color:#fff;border-radius:999px;padding:2px 11px;font-size:13px;
font-weight:600;white-space:nowrap}
.chips{display:flex;flex-wrap:wrap;gap:8px;margin:12px 0 4px}
.chip{border-radius:8px;padding:6px 12px;background:#f0f3f7;font-size:14px}
.chip b{font-size:18px;margin-right:4px}
.reason{margin:10px 0 0;padding:8px 12px;border-radius:6px;background:#fff6e5;
border-left:4px solid #a86400;font-size:14px;overflow-wrap:anywhere}
.reason.failed{background:#fdecea;border-left-color:#b42318}
img.preview{display:block;max-width:100%;height:auto;margin:14px 0 6px;border-radius:6px;
background:#000}
.missing{color:#5b6576;font-style:italic;margin:12px 0}
table{border-collapse:collapse;font-size:14px;margin:8px 0}
th,td{padding:4px 12px 4px 0;text-align:left;vertical-align:top}
th{color:#5b6576;font-weight:600;border-bottom:1px solid #dde2ea}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.tables{display:flex;flex-wrap:wrap;gap:8px 40px;align-items:flex-start}
code{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:#3a4556;
overflow-wrap:anywhere}
.files{font-size:12.5px;color:#5b6576;margin-top:6px}
footer{color:#8a93a3;font-size:12.5px;margin-top:40px}
"""


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """One task's decision in a review pass, for the report's review table.

    ``decision`` is what was done (``accepted``, ``rejected``, ``corrected``, ``skipped``,
    ``failed``); ``dice`` maps a taxonomy category to the Dice of the task's labels
    against the model; ``reason`` says why (the worst category, a skip reason).
    """

    task_id: str
    task_name: str
    decision: str
    dice: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class _RunView:
    info: RunInfo
    tasks: tuple[TaskEvent, ...]


def build_report(
    work_dir: str | os.PathLike[str],
    run_id: str | None = None,
    *,
    runs: int = 1,
    review: Sequence[ReviewRow] = (),
    title: str = "autolabel report",
) -> str:
    """The report of ``run_id``, or of the ``runs`` newest runs (0: all), as HTML text.

    See the module docstring for what it shows and its guarantees.
    """
    with Ledger(ledger_path(work_dir), create=False) as ledger:
        infos = ledger.runs()
        if run_id is not None:
            infos = [r for r in infos if r.run_id == run_id]
            if not infos:
                raise ValueError(f"no run {run_id!r} in the ledger of {work_dir}")
        elif runs > 0:
            infos = infos[:runs]
        views = [_RunView(info, _task_ends(ledger, info.run_id)) for info in infos]
    parts = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">Work folder <code>{_e(str(work_dir))}</code> · '
        f"{len(views)} run{'s' if len(views) != 1 else ''} · generated {_when(time.time())}</p>",
    ]
    if review:
        parts.append(_review_section(review))
    if not views:
        parts.append('<p class="missing">Nothing has run with this work folder yet.</p>')
    parts.extend(_run_section(view) for view in views)
    parts.append(
        "<footer>Made by <b>autolabel report</b> from the ledger of the work folder. "
        "RedBrick stays the truth: open a task there to see what it holds now.</footer>"
    )
    return _page(title, "\n".join(parts))


def write_report(
    work_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    *,
    runs: int = 1,
    review: Sequence[ReviewRow] = (),
    title: str = "autolabel report",
) -> Path:
    """Write :func:`build_report` to ``out`` (default ``WORK/report.html``) atomically.

    The text goes to a temporary file in the target folder, which is then renamed over
    ``out``: a reader never sees half a report. Returns the path written.
    """
    target = Path(out) if out is not None else Path(work_dir) / "report.html"
    text = build_report(work_dir, run_id, runs=runs, review=review, title=title)
    with atomic_file(target) as stream:
        stream.write(text.encode("utf-8"))
    return target


# -- gathering --------------------------------------------------------------------------------


def _task_ends(ledger: Ledger, run_id: str) -> tuple[TaskEvent, ...]:
    """The last event of each task in a run, by task name."""
    latest: dict[str, TaskEvent] = {}
    for task_id in _run_task_ids(ledger.path, run_id):
        for event in ledger.history(task_id):
            if event.run_id == run_id:
                latest[event.task_id] = event
    return tuple(sorted(latest.values(), key=lambda e: (e.task_name, e.task_id)))


def _run_task_ids(path: Path, run_id: str) -> list[str]:
    """Ids of the tasks a run touched (the ``events`` table of the ledger's schema)."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT task_id FROM events WHERE run_id = ? GROUP BY task_id", (run_id,)
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read the ledger {path}: {exc}") from exc
    return [str(row[0]) for row in rows]


# -- rendering --------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


def _badge(state: str) -> str:
    text, colour = OUTCOMES.get(state, (f"interrupted after {state}", "#5b6576"))
    return f'<span class="badge" style="background:{colour}">{_e(text)}</span>'


def _run_section(view: _RunView) -> str:
    info, tasks = view.info, view.tasks
    model = info.model
    weights = model.weights_hash[:16] if model and model.weights_hash else "none"
    took = (info.finished_at - info.started_at) if info.finished_at else None
    counts: dict[str, int] = {}
    for event in tasks:
        key = event.state.value if event.state.value in _ENDED else "interrupted"
        counts[key] = counts.get(key, 0) + 1
    chips = "".join(
        f'<span class="chip" style="color:{OUTCOMES.get(k, ("", "#5b6576"))[1]}">'
        f"<b>{n}</b>{_e(OUTCOMES[k][0] if k in OUTCOMES else k)}</span>"
        for k, n in sorted(counts.items(), key=lambda kv: list(OUTCOMES).index(kv[0])
                           if kv[0] in OUTCOMES else 99)
    )  # fmt: skip
    head = (
        f'<section class="card"><div class="row"><h3>Run <code>{_e(info.run_id)}</code></h3>'
        f'<span class="kv">mode <b>{_e(info.mode)}</b></span>'
        f'<span class="kv">status <b>{_e(info.status)}</b></span></div>'
        f'<div class="row"><span class="kv">model <b>{_e(model.name if model else "—")}'
        f"</b> {_e(model.version if model else '')}</span>"
        f'<span class="kv">weights <code>{_e(weights)}</code></span>'
        f'<span class="kv">started <b>{_when(info.started_at)}</b></span>'
        f'<span class="kv">took <b>{"—" if took is None else f"{took:.1f} s"}</b></span>'
        f'<span class="kv">tasks <b>{len(tasks)}</b></span></div>'
        f'<div class="chips">{chips}{route_chips(tasks)}</div>'
        f'<div class="tables">{_totals(tasks)}</div>{_index(tasks)}'
        f'<div class="files">command <code>{_e(" ".join(redact_argv(info.command)) or "(Python API)")}'
        "</code></div></section>"
    )
    cards = "".join(_task_card(event) for event in tasks)
    kind = _MODE_TITLES.get(info.mode, info.mode)
    return f"<h2>{_e(kind)} · {_when(info.started_at)}</h2>\n{head}\n{cards}"


def _totals(tasks: Iterable[TaskEvent]) -> str:
    seconds: dict[str, list[float]] = {}
    volumes: dict[str, float] = {}
    for event in tasks:
        for stage, value in _numbers(event.detail.get("stage_seconds")).items():
            seconds.setdefault(stage, []).append(value)
        for category, ml in _numbers(event.detail.get("volumes_ml")).items():
            volumes[category] = volumes.get(category, 0.0) + ml
    rows = "".join(
        f"<tr><td>{_e(stage)}</td><td class=n>{len(values)}</td>"
        f"<td class=n>{sum(values) / len(values):.2f}</td><td class=n>{sum(values):.2f}</td></tr>"
        for stage, values in _ordered(seconds)
    )
    timing = (
        "<table><tr><th>stage</th><th class=n>tasks</th><th class=n>s / task</th>"
        f"<th class=n>total s</th></tr>{rows}</table>"
        if rows
        else ""
    )
    return timing + _volume_table(volumes, "predicted ml, all tasks")


def _index(tasks: Sequence[TaskEvent]) -> str:
    """One line per task: name, outcome, seconds, reason -- to skim a large run."""
    if len(tasks) < 2:
        return ""
    rows = "".join(
        f"<tr><td>{_e(e.task_name or e.task_id)}</td><td>{_badge(e.state.value)}</td>"
        f"<td class=n>{sum(_numbers(e.detail.get('stage_seconds')).values()):.2f}</td>"
        f"<td>{_e(e.detail.get('reason') or e.error_message or '')}</td></tr>"
        for e in tasks
    )
    return (
        "<table><tr><th>task</th><th>outcome</th><th class=n>seconds</th><th>reason</th></tr>"
        f"{rows}</table>"
    )


def _numbers(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float)}


def _ordered(values: Mapping[str, Any]) -> list[tuple[str, Any]]:
    rank = {stage: i for i, stage in enumerate(STAGES)}
    return sorted(values.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def _volume_table(volumes: Mapping[str, float], heading: str) -> str:
    if not volumes:
        return ""
    rows = "".join(
        f"<tr><td>{_e(category)}</td><td class=n>{ml:,.1f}</td></tr>"
        for category, ml in sorted(volumes.items())
    )
    return f"<table><tr><th>category</th><th class=n>{_e(heading)}</th></tr>{rows}</table>"


def _task_card(event: TaskEvent) -> str:
    state = event.state.value
    name = event.task_name or event.task_id
    reason = str(event.detail.get("reason") or "")
    if event.state is TaskState.FAILED and event.error_type and not reason:
        reason = f"{event.error_type}: {event.error_message}"
    elif event.state is TaskState.FAILED and event.error_type:
        reason = f"{reason} ({event.error_type})"
    reason_html = (
        f'<div class="reason{" failed" if state == "failed" else ""}">{_e(reason)}</div>'
        if reason
        else ""
    )
    files = event.detail.get("files")
    files = files if isinstance(files, Mapping) else {}
    previews = "".join(
        _preview(str(path), name)
        for key, path in sorted(files.items())
        if str(key).startswith("preview")
    )
    if not previews and state in ("submitted", "draft_saved", "dry_run"):
        previews = '<p class="missing">No preview (the run was made with --no-previews).</p>'
    stage_seconds = _numbers(event.detail.get("stage_seconds"))
    timing = ""
    if stage_seconds:
        rows = "".join(
            f"<tr><td>{_e(stage)}</td><td class=n>{seconds:.2f}</td></tr>"
            for stage, seconds in _ordered(stage_seconds)
        )
        total = sum(stage_seconds.values())
        timing = (
            f"<table><tr><th>stage</th><th class=n>seconds</th></tr>{rows}"
            f"<tr><td><b>total</b></td><td class=n><b>{total:.2f}</b></td></tr></table>"
        )
    volumes = _volume_table(_numbers(event.detail.get("volumes_ml")), "ml")
    file_list = " · ".join(
        f"{_e(key)} <code>{_e(path)}</code>"
        for key, path in sorted(files.items())
        if not str(key).startswith("preview")
    )
    return (
        f'<section class="card"><div class="row"><h3>{_e(name)}</h3>{_badge(state)}'
        f'<span class="kv">task id <code>{_e(event.task_id)}</code></span>'
        f'<span class="kv">at <b>{_when(event.at)}</b></span></div>'
        f"{reason_html}{route_line(event.detail)}{previews}"
        f'<div class="tables">{volumes}{confidence_table(event.detail)}{timing}</div>'
        + (f'<div class="files">{file_list}</div>' if file_list else "")
        + "</section>\n"
    )


def _preview(path: str, name: str) -> str:
    """An ``<img>`` with the PNG embedded, or a note when the file has gone."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return f'<p class="missing">Preview missing: <code>{_e(path)}</code></p>'
    encoded = base64.b64encode(data).decode("ascii")
    return (
        f'<img class="preview" alt="{_e(f"labels of {name} on three planes")}" '
        f'src="data:image/png;base64,{encoded}">'
    )


def _review_section(rows: Sequence[ReviewRow]) -> str:
    colours = {"accepted": "#1b7f3b", "rejected": "#b42318", "corrected": "#1f5fbf"}
    categories = sorted({c for row in rows for c in row.dice})
    head = "".join(f"<th class=n>Dice {_e(c)}</th>" for c in categories)
    body = ""
    for row in rows:
        colour = colours.get(row.decision, "#a86400")
        cells = "".join(
            f"<td class=n>{row.dice[c]:.3f}</td>" if c in row.dice else "<td class=n>—</td>"
            for c in categories
        )
        body += (
            f"<tr><td>{_e(row.task_name or row.task_id)}</td>"
            f'<td><span class="badge" style="background:{colour}">{_e(row.decision)}</span></td>'
            f"{cells}<td>{_e(row.reason)}</td></tr>"
        )
    return (
        '<h2>Review</h2><section class="card"><p class="sub">Labels in the review stage '
        "compared with the model's prediction: accepted when every category agrees "
        "(Dice at or above the threshold), rejected otherwise.</p>"
        f"<table><tr><th>task</th><th>decision</th>{head}<th>reason</th></tr>{body}</table>"
        "</section>"
    )


__all__ = ["OUTCOMES", "ReviewRow", "build_report", "write_report"]
