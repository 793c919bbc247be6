"""The ``autolabel`` command line: one sub-command per module in :mod:`autolabel.cli.commands`.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``handler`` to a function ``(argparse.Namespace) -> int``. Heavy imports (torch, nibabel)
happen inside the handlers, so ``autolabel --help`` stays fast.

Exit codes are decided here and nowhere else:

* 0 -- everything done;
* 1 -- some tasks failed (see the ledger / summary);
* 2 -- usage or configuration error;
* 3 -- authentication failed or RedBrick unreachable.

No parser accepts abbreviated options (``--api`` is not ``--api-key``), and everything the
command writes to stdout and stderr passes through :func:`autolabel.settings.secrets.redacting_output`:
the API key, however it was given, is never shown.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from autolabel.errors import AuthError, AutolabelError, ConfigError, TransportError
from autolabel.settings.secrets import keep_secret, redacting_output, secrets_in_argv

#: Command modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "autolabel.cli.commands.run",
    "autolabel.cli.commands.review",
    "autolabel.cli.commands.reannotate",
    "autolabel.cli.commands.undo",
    "autolabel.cli.commands.watch",
    "autolabel.cli.commands.status",
    "autolabel.cli.commands.report",
    "autolabel.cli.commands.demo",
    "autolabel.cli.commands.emulator",
    "autolabel.cli.commands.models",
    "autolabel.cli.commands.predict",
)

EXIT_OK = 0
EXIT_TASKS_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class Parser(argparse.ArgumentParser):
    """An argument parser that takes options only as spelled (no abbreviations).

    Sub-parsers are made of the same class, so the rule holds for every sub-command.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every registered sub-command."""
    parser = Parser(
        prog="autolabel",
        description="Pre-label medical images in RedBrick AI projects with segmentation models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for secret in secrets_in_argv(argv):
        keep_secret(secret)
    with redacting_output():
        try:
            return _main(argv)
        except Exception:
            # An unforeseen error's traceback is printed here, inside the redacting block,
            # not by the interpreter after the streams are restored: its text may hold the
            # key (a path or a value that contains it). The exit code stays the interpreter's.
            traceback.print_exc()
            return EXIT_TASKS_FAILED


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"autolabel: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (AuthError, TransportError) as exc:
        print(f"autolabel: error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except AutolabelError as exc:
        print(f"autolabel: error: {exc}", file=sys.stderr)
        return EXIT_TASKS_FAILED
    except KeyboardInterrupt:
        print("autolabel: interrupted", file=sys.stderr)
        return 130
    return code
