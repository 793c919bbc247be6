"""Client rules that need no server: endpoint normalisation, backoff bounds, key checks."""

from __future__ import annotations

import base64
import gzip
import json

import pytest

from autolabel.errors import AuthError
from autolabel.redbrick import RedBrickClient, RetryPolicy, graphql_endpoint

URLS = [
    None,
    "https://api.redbrickai.com",
    "https://API.redbrickai.com/",
    "https://mycompany.redbrickai.com/",
    "https://mycompany.redbrickai.com:8443/some/path",
    "http://localhost:18765",
    "http://LOCALHOST:8000/api",
    "http://emu.localhost:8080/",
    "http://127.0.0.1:18765",
    "https://abc.execute-api.eu-west-1.amazonaws.com/prod",
    "mycompany.redbrickai.com",
]


@pytest.mark.parametrize("url", URLS)
def test_endpoint_is_the_one_the_sdk_uses(url: str | None) -> None:
    """A script that passes ``url=`` reaches the same endpoint through us as through the SDK."""
    sdk_client = pytest.importorskip("redbrick.common.client")
    sdk_url = url if url is None or url.startswith("http") else "https://" + url
    assert graphql_endpoint(url) == sdk_client._get_api_url(sdk_url)


def test_backoff_grows_is_jittered_and_honours_retry_after() -> None:
    """Waits double per try within jitter bounds, stay capped, and never undercut Retry-After."""
    policy = RetryPolicy(backoff_base=1.0, backoff_max=8.0, retry_after_max=30.0)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 8.0)]:
        waits = [policy.delay(attempt) for _ in range(200)]
        assert all(full / 2 <= w <= full for w in waits)
        assert len(set(waits)) > 100  # jittered, so parallel workers do not retry in step
    assert policy.delay(1, retry_after=5.0) == 5.0
    assert policy.delay(1, retry_after=500.0) == 30.0


@pytest.mark.parametrize("key", ["", "short", "x" * 42, "x" * 44])
def test_malformed_key_is_refused_before_any_request(key: str) -> None:
    """A key of the wrong length fails at once, and the message does not echo it."""
    with pytest.raises(AuthError) as caught:
        RedBrickClient(key, "http://localhost:1")
    assert "43" in str(caught.value)
    if key:
        assert key not in str(caught.value)


def test_request_body_is_gzip_base64_json_like_the_sdk() -> None:
    """The body is base64(gzip(JSON {query, variables})) and headers carry the key, not Bearer."""
    client = RedBrickClient("k" * 43, "http://localhost:1")
    body = client.transport._encode("query q { me { userId } }", {"a": 1})
    assert body.startswith(b"H4sI")  # base64 of the gzip magic
    assert json.loads(gzip.decompress(base64.b64decode(body))) == {
        "query": "query q { me { userId } }",
        "variables": {"a": 1},
    }
    headers = client.transport._graphql_headers
    assert headers["ApiKey"] == "k" * 43 and headers["Content-Encoding-RB"] == "gzip"
    assert "Authorization" not in headers
    assert "k" * 43 not in repr(client) + repr(client.transport)


def test_tls_verification_stays_on_despite_the_sdk_variable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """RB_DISABLE_SSL_VERIFICATION does not turn TLS checks off; it only earns a warning."""
    monkeypatch.setenv("RB_DISABLE_SSL_VERIFICATION", "1")
    client = RedBrickClient("k" * 43)
    assert client.transport._session.verify is True
    assert "RB_DISABLE_SSL_VERIFICATION is set but ignored" in caplog.text
    assert client.transport.endpoint == "https://api.redbrickai.com/graphql/"
