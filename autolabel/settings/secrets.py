"""Keep the API key out of every output and file.

The key reaches autolabel by a flag (``--api-key KEY``, ``--api-key=KEY``), the environment,
``autolabel.toml`` or a RedBrick CLI profile. Once known it is registered with
:func:`keep_secret` (:func:`autolabel.settings.resolve_connection` registers the key it
resolves; the command line registers the flag's value and ``REDBRICK_API_KEY`` before it
parses anything). From then on:

* :func:`redact` replaces every registered secret, wherever it sits in a text (inside a
  URL, a task name, an error message), by :data:`MASK`; :func:`redact_value` does the same
  through lists and dicts (the options a ledger records);
* :func:`redact_argv` masks a command line: the value of ``--api-key`` and of any
  abbreviation of it (the parser refuses abbreviations, but a refused command line is still
  echoed in its error and may sit in an older ledger), and any registered secret inside
  any argument;
* :func:`redacting_output` wraps ``sys.stdout`` and ``sys.stderr`` for the life of a command,
  so no print, progress bar, log line or argparse error shows a registered secret.

Secrets shorter than :data:`MIN_SECRET` characters are not registered: masking every
occurrence of a short, common string would garble the output and protect nothing.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

#: What a masked secret reads as.
MASK = "***"
#: The shortest value :func:`keep_secret` registers.
MIN_SECRET = 8
#: The flag that carries the key; any prefix of it of at least 3 characters counts.
KEY_FLAG = "--api-key"

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def keep_secret(value: str | None) -> None:
    """Register ``value`` (stripped) as a secret to mask from now on, in this process."""
    global _pattern
    value = (value or "").strip()
    if len(value) >= MIN_SECRET:
        with _lock:
            if value not in _secrets:
                _secrets.add(value)
                longest_first = sorted(_secrets, key=len, reverse=True)
                _pattern = re.compile("|".join(map(re.escape, longest_first)), re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by :data:`MASK`, in any letter case
    (the SDK's url normalisation lower-cases a url that carries the key)."""
    pattern = _pattern
    return text if pattern is None else pattern.sub(MASK, text)


def redact_value(value: Any) -> Any:
    """``value`` with :func:`redact` applied to every string in it (lists, tuples, dicts)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_value(k): redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


def _is_key_flag(arg: str) -> bool:
    name = arg.partition("=")[0]
    return len(name) >= 3 and KEY_FLAG.startswith(name)


def secrets_in_argv(argv: Sequence[str]) -> list[str]:
    """The values ``argv`` gives to ``--api-key`` or any abbreviation of it."""
    found = []
    for i, arg in enumerate(argv):
        if not _is_key_flag(arg):
            continue
        if "=" in arg:
            found.append(arg.partition("=")[2])
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            found.append(argv[i + 1])
    return found


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the key flag's value (any spelling) and every registered secret masked."""
    redacted: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next and not arg.startswith("--"):
            redacted.append(MASK)
        elif _is_key_flag(arg):
            redacted.append(f"{arg.partition('=')[0]}={MASK}" if "=" in arg else arg)
        else:
            redacted.append(redact(arg))
        hide_next = _is_key_flag(arg) and "=" not in arg
    return redacted


class _RedactingStream:
    """A text stream that masks registered secrets in what is written, else the wrapped one."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def writelines(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def redacting_output() -> Iterator[None]:
    """Mask registered secrets in everything written to stdout and stderr inside the block.

    Also registers the key of ``REDBRICK_API_KEY``, so that it is masked even before the
    settings are resolved.
    """
    keep_secret(os.environ.get("REDBRICK_API_KEY"))
    saved = sys.stdout, sys.stderr
    sys.stdout = _RedactingStream(saved[0])
    sys.stderr = _RedactingStream(saved[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


__all__ = [
    "KEY_FLAG",
    "MASK",
    "MIN_SECRET",
    "keep_secret",
    "redact",
    "redact_argv",
    "redact_value",
    "redacting_output",
    "secrets_in_argv",
]
