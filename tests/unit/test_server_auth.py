"""The API key check shared by HTTP requests and WebSocket handshakes, tickets, and keys kept
out of the logs."""

from __future__ import annotations

import hmac
import logging

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient
from uvicorn.logging import AccessFormatter

from whisper_service.config import Settings, describe_error
from whisper_service.server import create_app
from whisper_service.server.auth import (
    ApiKey,
    ApiKeyMiddleware,
    KeysFileError,
    Tickets,
    ticket_secret,
)
from whisper_service.server.logs import RedactSecrets, redact


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
    ("/health", True), ("/", True), ("/static/app.js", True), ("/ready", True),
    ("/metrics", False), ("/v1/models", False), ("/healthz", False),
])
def test_public_paths(path, public):
    assert ApiKeyMiddleware._public(path) is public


# -- several keys -------------------------------------------------------------------------------

def test_comma_separated_keys_each_work():
    api_key = ApiKey("first, second,third")
    for key in ("first", "second", "third"):
        assert api_key.allows({"x-api-key": key}, {}), key
    for wrong in ("first, second", "fourth", "", "firs"):
        assert not api_key.allows({"x-api-key": wrong}, {}), wrong


def test_keys_file_adds_keys(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# the team's keys\n\nfrom-file-1\n  from-file-2  \n#retired-key\n")
    api_key = ApiKey.from_settings(Settings(api_key="from-env", api_keys_file=path))
    for key in ("from-env", "from-file-1", "from-file-2"):
        assert api_key.allows({"authorization": f"Bearer {key}"}, {}), key
    for wrong in ("#retired-key", "retired-key", "# the team's keys", ""):
        assert not api_key.allows({"authorization": f"Bearer {wrong}"}, {}), wrong


def test_keys_file_alone_requires_a_key(tmp_path):
    path = tmp_path / "keys"
    path.write_text("only\n")
    api_key = ApiKey.from_settings(Settings(api_keys_file=path))
    assert api_key.required
    assert not api_key.allows({}, {}) and api_key.allows({"x-api-key": "only"}, {})


def test_keys_file_without_keys_refuses_to_start(tmp_path):
    """An empty file must not leave the server open, as an unset key would."""
    path = tmp_path / "keys"
    path.write_text("# nothing yet\n\n")
    with pytest.raises(KeysFileError, match="holds no keys"):
        ApiKey.from_settings(Settings(api_keys_file=path))


def test_missing_keys_file_is_a_settings_error(tmp_path):
    with pytest.raises(ValidationError) as info:
        Settings(api_keys_file=tmp_path / "absent")
    assert describe_error(info.value).startswith("WHISPER_SERVICE_API_KEYS_FILE:")


@pytest.mark.parametrize("given", ["k1", "k3", "wrong", ""])
def test_every_key_is_compared_in_constant_time(monkeypatch, given):
    """No early exit: a match on the first key costs as many comparisons as no match."""
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    api_key = ApiKey(["k1", "k2", "k3"])
    assert api_key.allows({"x-api-key": given}, {}) is (given in ("k1", "k3"))
    assert sorted(b for _, b in calls) == [b"k1", b"k2", b"k3"]
    assert all(a == given.encode() for a, _ in calls)


# -- tickets ------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SECRET = ticket_secret(["s3cret"])


def test_ticket_is_single_use_and_unforgeable():
    tickets = Tickets(SECRET, ttl_s=30, clock=Clock())
    ticket = tickets.issue()
    assert len(ticket) >= 40 and ticket != tickets.issue()
    assert tickets.redeem(ticket)
    assert not tickets.redeem(ticket)
    assert not tickets.redeem("never-issued")
    assert not tickets.redeem("*" * 54)  # not base64 at all
    fresh = tickets.issue()
    flipped = fresh[:20] + ("A" if fresh[20] != "A" else "B") + fresh[21:]
    assert not tickets.redeem(flipped)  # a changed expiry or nonce breaks the signature
    assert tickets.redeem(fresh)


def test_tickets_work_on_every_replica_with_the_same_keys():
    """Behind a load balancer the ticket request and the socket may reach different
    replicas: the same keys (in any order) sign and check alike; other keys do not."""
    clock = Clock()
    issuer = Tickets(ticket_secret(["k1", "k2"]), clock=clock)
    other_replica = Tickets(ticket_secret(["k2", "k1"]), clock=clock)
    stranger = Tickets(ticket_secret(["k1"]), clock=clock)
    ticket = issuer.issue()
    assert not stranger.redeem(ticket)
    assert other_replica.redeem(ticket) and not other_replica.redeem(ticket)
    assert ticket_secret([]) != ticket_secret([])  # no keys: a random secret, never shared


def test_ticket_expires_and_used_ones_are_pruned():
    clock = Clock()
    tickets = Tickets(SECRET, ttl_s=30, clock=clock)
    early, late = tickets.issue(), tickets.issue()
    clock.now += 29.9
    assert tickets.redeem(early)
    clock.now += 0.1  # exactly ttl_s after the issue
    assert not tickets.redeem(late)
    kept = tickets.issue()
    clock.now += 20
    assert tickets.redeem(kept) and len(tickets) == 1  # early's record expired with it
    clock.now += 15  # and now kept's
    assert tickets.redeem(tickets.issue()) and len(tickets) == 1


def test_a_ticket_expiring_later_than_ours_can_is_refused():
    """Signed with the same keys but by a replica whose clock or TTL runs far ahead: its
    record would sit at the head of the store and hold up the pruning of all others."""
    clock = Clock()
    ahead = Clock()
    ahead.now = clock.now + 3600
    far = Tickets(SECRET, ttl_s=30, clock=ahead).issue()
    near = Tickets(SECRET, ttl_s=30, clock=clock)
    assert not near.redeem(far) and len(near) == 0
    slightly = Clock()
    slightly.now = clock.now + 2  # within the allowed clock skew
    assert near.redeem(Tickets(SECRET, ttl_s=30, clock=slightly).issue())


def test_redeemed_store_is_bounded():
    clock = Clock()
    tickets = Tickets(SECRET, ttl_s=30, limit=3, clock=clock)
    assert all(tickets.redeem(tickets.issue()) for _ in range(3))
    assert not tickets.redeem(tickets.issue())  # full: refused, not remembered
    assert len(tickets) == 3
    clock.now += 30  # expired ones free their places
    assert tickets.redeem(tickets.issue()) and len(tickets) == 1


def test_websocket_credentials():
    clock = Clock()
    api_key = ApiKey("s3cret", Tickets(SECRET, ttl_s=30, clock=clock))
    ticket = api_key.tickets.issue()
    assert not api_key.allows({}, {"ticket": ticket})  # HTTP takes no tickets...
    assert api_key.allows_websocket({}, {"ticket": ticket})  # ...a WebSocket does, once
    assert not api_key.allows_websocket({}, {"ticket": ticket})
    protocols = {"sec-websocket-protocol": "whisper-service, bearer.s3cret"}
    assert api_key.allows_websocket(protocols, {})
    assert not api_key.allows_websocket({"sec-websocket-protocol": "bearer.s3cre"}, {})
    assert api_key.allows_websocket({}, {"api_key": "s3cret"})  # kept for old clients
    # The first credential decides: a wrong header does not spend (or pass on) a ticket.
    other = api_key.tickets.issue()
    assert not api_key.allows_websocket({"x-api-key": "wrong"}, {"ticket": other})
    assert api_key.allows_websocket({}, {"ticket": other})
    late = api_key.tickets.issue()
    clock.now += 31
    assert not api_key.allows_websocket({}, {"ticket": late})


@pytest.mark.parametrize("offered, accepted", [
    ("whisper-service, bearer.s3cret", "whisper-service"),
    ("bearer.s3cret, whisper-service", "whisper-service"),
    ("bearer.s3cret", None),  # never echo the key
    ("", None),
])
def test_subprotocol_never_echoes_the_key(offered, accepted):
    headers = {"sec-websocket-protocol": offered} if offered else {}
    assert ApiKey("s3cret").subprotocol(headers) == accepted


def _client(**settings) -> TestClient:
    """The app without its lifespan: no model loads, the auth paths only."""
    return TestClient(create_app(Settings(**settings)))


def test_ticket_endpoint_and_stream_handshake(tmp_path):
    client = _client(api_key="s3cret", cache_dir=tmp_path, ticket_ttl_s=45)
    denied = client.post("/v1/stream/ticket")
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
    res = client.post("/v1/stream/ticket", headers={"Authorization": "Bearer s3cret"})
    assert res.status_code == 200 and res.headers["cache-control"] == "no-store"
    body = res.json()
    assert body["expires_in"] == 45 and len(body["ticket"]) >= 40

    # Past the key check, a stream wants its config first: `config_required` means "let in".
    with client.websocket_connect(f"/v1/stream?ticket={body['ticket']}") as ws:
        ws.send_bytes(b"\0\0")
        assert ws.receive_json()["code"] == "config_required"
    with client.websocket_connect(f"/v1/stream?ticket={body['ticket']}") as ws:
        assert ws.receive_json()["code"] == "unauthorized"
    with client.websocket_connect(
            "/v1/stream", subprotocols=["whisper-service", "bearer.s3cret"]) as ws:
        assert ws.accepted_subprotocol == "whisper-service"
        ws.send_bytes(b"\0\0")
        assert ws.receive_json()["code"] == "config_required"


def test_realtime_handshake_takes_openai_browser_credentials(tmp_path):
    """OpenAI's browser clients offer `realtime` plus the key as a subprotocol."""
    client = _client(api_key="s3cret", cache_dir=tmp_path)
    with client.websocket_connect("/v1/realtime?intent=transcription") as ws:
        error = ws.receive_json()
        assert error["type"] == "error" and error["error"]["code"] == "unauthorized"
    offered = ["realtime", "openai-insecure-api-key.s3cret"]
    with client.websocket_connect("/v1/realtime?intent=transcription",
                                  subprotocols=offered) as ws:
        assert ws.accepted_subprotocol == "realtime"  # never the key
        assert ws.receive_json()["type"] == "session.created"
    with client.websocket_connect("/v1/realtime?intent=conversation",
                                  headers={"Authorization": "Bearer s3cret"}) as ws:
        assert ws.receive_json()["error"]["code"] == "unsupported_intent"


# -- logs -------------------------------------------------------------------------------------

ACCESS_FORMAT = '%(client_addr)s - "%(request_line)s" %(status_code)s'


def _access_record(path: str) -> logging.LogRecord:
    """A record as uvicorn's HTTP protocols log it (h11_impl / httptools_impl)."""
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                             '%s - "%s %s HTTP/%s" %d',
                             ("127.0.0.1:50000", "GET", path, "1.1", 200), None)


def test_access_log_redacts_key_and_ticket():
    record = _access_record("/v1/models?model=tiny.en&api_key=s3cret&ticket=T1ck3t-_x&x=1")
    assert RedactSecrets().filter(record)
    line = AccessFormatter(ACCESS_FORMAT, use_colors=False).format(record)
    assert line == ('127.0.0.1:50000 - "GET /v1/models?model=tiny.en&api_key=***&ticket=***&x=1 '
                    'HTTP/1.1" 200 OK')


def test_redaction_is_installed_on_uvicorns_loggers(tmp_path):
    _client(cache_dir=tmp_path)  # the app factory installs it
    seen = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    handler = Keep()
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        old_level = logger.level
        logger.setLevel(logging.DEBUG)  # not `.level =`: that keeps isEnabledFor's cache
        try:
            if name == "uvicorn.access":
                logger.handle(_access_record("/v1/stream/ticket?api_key=s3cret"))
            else:  # the WebSocket handshake, and websockets' debug dump of its headers
                logger.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:1",
                            "/v1/stream?ticket=s3cret")
                logger.debug("< %s: %s", "Authorization", "Bearer s3cret")
                logger.debug("< %s: %s", "Sec-WebSocket-Protocol",
                             "whisper-service, bearer.s3cret")
                logger.debug("< %s: %s", "X-API-Key", "s3cret")
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
    assert len(seen) == 5, seen
    assert not [line for line in seen if "s3cret" in line], seen
    assert "/v1/stream?ticket=***" in seen[1] and "Bearer ***" in seen[2]
    assert "whisper-service, bearer.***" in seen[3]


@pytest.mark.parametrize("text, expected", [
    ("/x?api_key=k", "/x?api_key=***"),
    ("/x?a=1&api%5Fkey=k&b=2", "/x?a=1&api%5Fkey=***&b=2"),
    ("/x?my_api_key=k&ticketing=1", "/x?my_api_key=k&ticketing=1"),
    ("/x?ticket=", "/x?ticket=***"),
])
def test_redact(text, expected):
    assert redact(text) == expected
