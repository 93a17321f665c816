"""The API key check shared by HTTP requests and WebSocket handshakes."""

from __future__ import annotations

import pytest

from whisper_service.server.auth import ApiKey, ApiKeyMiddleware


@pytest.mark.parametrize("headers, query, allowed", [
    ({"authorization": "Bearer s3cret"}, {}, True),
    ({"authorization": "bearer s3cret"}, {}, True),
    ({"x-api-key": "s3cret"}, {}, True),
    ({}, {"api_key": "s3cret"}, True),
    ({"authorization": "Bearer wrong"}, {"api_key": "s3cret"}, False),  # a wrong header wins
    ({"authorization": "Basic s3cret"}, {}, False),
    ({}, {}, False),
    ({"x-api-key": "s3cre"}, {}, False),
])
def test_key_forms(headers, query, allowed):
    assert ApiKey("s3cret").allows(headers, query) is allowed


def test_no_key_configured_allows_everything():
    assert ApiKey(None).allows({}, {}) and ApiKey("").allows({}, {})


@pytest.mark.parametrize("path, public", [
    ("/health", True), ("/", True), ("/static/app.js", True),
    ("/ready", False), ("/metrics", False), ("/v1/models", False), ("/healthz", False),
])
def test_public_paths(path, public):
    assert ApiKeyMiddleware._public(path) is public
