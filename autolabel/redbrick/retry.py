"""When the client repeats a request: the backoff policy and the ``Retry-After`` header.

Only idempotent requests are ever repeated (GraphQL queries, storage downloads); the
transport decides that per call. This module only says how long to wait.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import requests


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """When and how long to wait before repeating an idempotent request.

    * ``attempts``: total tries, the first included (1 disables retries);
    * backoff: ``min(backoff_max, backoff_base * 2**(n-1))`` before try ``n+1``, with equal
      jitter (half fixed, half random) so that parallel workers do not retry in step;
    * a ``Retry-After`` header (seconds or HTTP date) on 429/503 is honoured when it is
      longer than the backoff, up to ``retry_after_max`` seconds.

    Retried: connection errors, timeouts, HTTP 429, 500, 502, 503, 504, and truncated
    downloads. Never retried: mutations and uploads (see :meth:`Transport.execute`).
    """

    attempts: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    retry_after_max: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep after failed try number ``attempt`` (1-based)."""
        backoff = min(self.backoff_max, self.backoff_base * 2.0 ** (attempt - 1))
        backoff = backoff / 2 + random.uniform(0, backoff / 2)
        if retry_after is not None:
            return min(self.retry_after_max, max(backoff, retry_after))
        return backoff


RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


def retry_after_seconds(response: requests.Response) -> float | None:
    """The ``Retry-After`` header in seconds (number or HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
