"""Where the API is: the GraphQL endpoint for a base URL, normalised exactly as
``redbrick-sdk`` does (``redbrick/common/client.py`` ``_get_api_url``; redbrick-protocol.md
§1.1), and presigned URLs shown without their signature."""

from __future__ import annotations

import urllib.parse

DEFAULT_URL = "https://api.redbrickai.com"


def graphql_endpoint(url: str | None = None) -> str:
    """The GraphQL endpoint for a base URL, normalised exactly as ``redbrick-sdk`` does.

    * default or ``https://api.redbrickai.com…`` → ``https://api.redbrickai.com/graphql/``;
    * a URL containing ``localhost`` or ``amazonaws.com`` keeps its scheme and path;
    * any other URL keeps only its host (and port), is forced to https and gets ``/api``.

    The whole URL is lower-cased, as the SDK does.

    >>> graphql_endpoint("https://mycompany.redbrickai.com/")
    'https://mycompany.redbrickai.com/api/graphql/'
    >>> graphql_endpoint("http://localhost:8000")
    'http://localhost:8000/graphql/'
    """
    base = (url or DEFAULT_URL).strip().lower().rstrip("/")
    if not base.startswith("http"):
        base = "https://" + base
    if DEFAULT_URL in base:
        base = DEFAULT_URL
    elif "amazonaws.com" not in base and "localhost" not in base:
        host = urllib.parse.urlsplit(base).netloc
        base = f"https://{host}/api"
    return base + "/graphql/"


def without_query(url: str) -> str:
    """A presigned URL without its signature, fit for logs and messages."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def storage_url_problem(url: str) -> str | None:
    """Why a storage URL RedBrick handed out is not one to fetch or send to: only
    ``http(s)`` URLs are (``file:``, ``ftp:`` and the like could never be presigned storage,
    and retrying them as a network failure only hides the server's mistake); None if fine."""
    scheme = urllib.parse.urlsplit(str(url)).scheme.lower()
    if scheme in ("http", "https"):
        return None
    return f"RedBrick gave a storage URL with scheme {scheme or 'none'!r}, not http(s)"
