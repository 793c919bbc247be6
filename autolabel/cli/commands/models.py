"""``autolabel models``: the model cards this installation can see, and whether each loads.

Cards come from ``$AUTOLABEL_MODELS`` (os.pathsep-separated folders), then the repository's
``models/`` folder. ``--json`` prints one object per card for scripts. A broken card is
listed as not available, with its error; the others are listed as usual and the exit code
stays 0 (using the broken card, ``--model NAME``, is the configuration error, exit 2).
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``models`` sub-command."""
    parser = subparsers.add_parser(
        "models",
        help="list the model cards: name, kind, version, labels, available or why not",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.set_defaults(handler=run_models)


def models_report() -> list[dict[str, Any]]:
    """One plain-JSON entry per card found (see :func:`autolabel.inference.list_models`)."""
    from autolabel.inference.card import scan_cards

    cards, broken = scan_cards()
    report = []
    for card in cards:
        ok, reason = card.availability()
        report.append(
            {
                "name": card.name,
                "kind": card.kind,
                "version": card.version,
                "modality": card.modality,
                "labels": {str(k): v for k, v in sorted(card.labels.items())},
                "categories": {str(k): v for k, v in sorted(card.categories.items())},
                "available": ok,
                "reason": reason,
                "path": str(card.path),
            }
        )
    for path, error in broken:
        report.append(
            {
                "name": path.parent.name,
                "kind": "",
                "version": "",
                "modality": "",
                "labels": {},
                "categories": {},
                "available": False,
                "reason": f"broken card: {error}",
                "path": str(path),
            }
        )
    return report


def run_models(args: argparse.Namespace) -> int:
    """Print the cards as a table (or JSON); exit 0."""
    report = models_report()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.table import Table

    from autolabel.cli.progress import make_console

    table = Table(title="autolabel models")
    for column in ("name", "kind", "version", "modality", "labels", "available"):
        table.add_column(column)
    for entry in report:
        labels = ", ".join(f"{k} {v}" for k, v in entry["labels"].items())
        status = "yes" if entry["available"] else f"no: {entry['reason']}"
        cells = (entry["name"], entry["kind"], entry["version"], entry["modality"] or "any")
        table.add_row(*cells, labels, status)
    make_console(width=160).print(table)
    return 0
