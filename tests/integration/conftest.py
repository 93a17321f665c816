"""The server in-process over the run's shared ModelManager (no model loads again)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from whisper_service.config import Settings
from whisper_service.server import create_app


@pytest.fixture
def client_for(model_manager, tiny_en):
    """`client_for(**settings)`: a started app on tiny.en by default, stopped after the test."""
    clients = []

    def make(**overrides) -> TestClient:
        settings = Settings(default_model="tiny.en", cache_dir=model_manager.cache_dir,
                            **overrides)
        client = TestClient(create_app(settings, manager=model_manager))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
