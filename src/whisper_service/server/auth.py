"""The optional API keys: one check for HTTP requests and WebSocket handshakes alike.

Browsers cannot set headers on a WebSocket. Rather than put the long-lived key in the
socket's URL (where proxies and access logs keep it), the page trades it, in a header, for a
single-use ticket (`Tickets`) and puts that in the URL; or a client offers the key as a
`bearer.<key>` subprotocol. `?api_key=` still works, for existing clients.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from .errors import error_response

# The page and its assets hold no data, and probes carry no key: a Kubernetes readiness
# probe cannot send one, and /ready tells only whether the model is loaded (or draining).
PUBLIC_PATHS = ("/health", "/ready", "/")
PUBLIC_PREFIXES = ("/static/",)

# A client offers `[SUBPROTOCOL, "bearer.<key>"]`; the server accepts with SUBPROTOCOL, since
# browsers drop a socket whose server picks none of the offered ones (and the key is no echo).
SUBPROTOCOL = "whisper-service"
OPENAI_KEY_PREFIX = "openai-insecure-api-key."
BEARER_PREFIX = "bearer."
MAX_TICKETS = 10_000
CLOCK_SKEW_S = 5.0  # replicas' clocks may differ this much


class KeysFileError(ValueError):
    """`WHISPER_SERVICE_API_KEYS_FILE` cannot be read or holds no key: refuse to start rather
    than serve without the protection the operator asked for."""


def split_keys(value: str | None) -> list[str]:
    """`WHISPER_SERVICE_API_KEY` may list several keys, comma-separated."""
    return [key.strip() for key in (value or "").split(",") if key.strip()]


def read_keys_file(path: Path) -> list[str]:
    """One key a line; blank lines and lines starting with `#` are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise KeysFileError(f"WHISPER_SERVICE_API_KEYS_FILE: cannot read {path} ({reason})") \
            from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise KeysFileError(f"WHISPER_SERVICE_API_KEYS_FILE: {path} holds no keys")
    return keys


class Tickets:
    """Signed single-use WebSocket tickets, each valid for `ttl_s` from its issue.

    A ticket is its expiry and a random nonce, signed with a secret derived from the API keys.
    Replicas configured with the same keys derive the same secret, so a ticket issued by one
    replica opens a stream on any other behind the same load balancer, with no shared store
    (the page's `POST /v1/stream/ticket` and its socket may land on different replicas).

    Each process remembers the nonces it redeemed until they expire: a ticket opens one socket
    per replica at most, within its `ttl_s`. That memory is bounded by `limit`; past it,
    redemptions are refused until some expire (10,000 stream opens in 30 s is far past what
    `max_sessions` admits)."""

    _NONCE, _MAC = 16, 16

    def __init__(self, secret: bytes, ttl_s: float = 30.0, limit: int = MAX_TICKETS,
                 clock: Callable[[], float] = time.time) -> None:
        self.ttl_s, self.limit, self.clock = ttl_s, limit, clock
        self._secret = secret
        self._used: dict[bytes, float] = {}  # nonce -> expiry, in redemption order

    def __len__(self) -> int:
        return len(self._used)

    def issue(self) -> str:
        payload = struct.pack(">d", self.clock() + self.ttl_s) + secrets.token_bytes(self._NONCE)
        return base64.urlsafe_b64encode(payload + self._sign(payload)).decode().rstrip("=")

    def redeem(self, ticket: str) -> bool:
        """True once (in this process) for an authentic ticket issued less than `ttl_s` ago."""
        try:
            raw = base64.urlsafe_b64decode(ticket + "=" * (-len(ticket) % 4))
        except (ValueError, TypeError):
            return False
        if len(raw) != 8 + self._NONCE + self._MAC:
            return False
        payload, mac = raw[:-self._MAC], raw[-self._MAC:]
        if not hmac.compare_digest(mac, self._sign(payload)):
            return False
        (expiry,), nonce, now = struct.unpack(">d", payload[:8]), payload[8:], self.clock()
        self._prune(now)
        # An expiry further out than a ticket of ours can have (another replica's clock or
        # TTL) would also hold up the pruning, which stops at the first unexpired record.
        too_far = expiry > now + self.ttl_s + CLOCK_SKEW_S
        if not now < expiry or too_far or nonce in self._used or len(self._used) >= self.limit:
            return False
        self._used[nonce] = expiry
        return True

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:self._MAC]

    def _prune(self, now: float) -> None:
        while self._used:
            nonce, expiry = next(iter(self._used.items()))
            if expiry > now:
                return
            del self._used[nonce]


def ticket_secret(keys: Iterable[str]) -> bytes:
    """The tickets' signing secret: the same on every replica that has the same keys, in any
    order. With no keys nothing checks tickets, and the secret is random."""
    ordered = sorted(set(keys))
    if not ordered:
        return secrets.token_bytes(32)
    return hashlib.sha256(b"whisper-service stream ticket\0" +
                          b"\0".join(key.encode() for key in ordered)).digest()


class ApiKey:
    """The one place that checks keys: a request's key against every configured key.

    Each check compares with all keys through `hmac.compare_digest`, never stopping at a
    match, so its time tells neither which key matched nor how much of one. The first
    credential a request carries is the one checked: a wrong header is not rescued by a
    right `?api_key=`."""

    def __init__(self, keys: str | Iterable[str] | None,
                 tickets: Tickets | None = None) -> None:
        listed = split_keys(keys) if keys is None or isinstance(keys, str) else list(keys)
        self._keys = [key.encode() for key in listed if key]
        self.tickets = tickets if tickets is not None else Tickets(ticket_secret(listed))

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKey:
        """`api_key` (comma-separated) plus the lines of `api_keys_file`."""
        keys = split_keys(settings.api_key)
        if settings.api_keys_file is not None:
            keys += read_keys_file(settings.api_keys_file)
        return cls(keys, Tickets(ticket_secret(keys), settings.ticket_ttl_s))

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def allows(self, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        """An HTTP request: `Authorization: Bearer`, `X-API-Key`, or `?api_key=`."""
        if not self._keys:
            return True
        return self._matches(_header_key(headers) or query.get("api_key") or "")

    def allows_websocket(self, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        """A WebSocket handshake: as HTTP, or a `bearer.<key>` subprotocol, or `?ticket=`
        (which is used up by this check)."""
        if not self._keys:
            return True
        given = presented_key(headers, query)
        if not given and query.get("ticket"):
            return self.tickets.redeem(query["ticket"])
        return self._matches(given or "")

    @staticmethod
    def subprotocol(headers: Mapping[str, str]) -> str | None:
        """The subprotocol to accept a WebSocket with: ours if the client offered it."""
        return SUBPROTOCOL if SUBPROTOCOL in _offered_subprotocols(headers) else None

    def _matches(self, given: str) -> bool:
        candidate = given.encode()
        found = False
        for key in self._keys:
            found |= hmac.compare_digest(candidate, key)
        return found


def presented_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The key a request or handshake carries, wherever it carries it (the first found)."""
    return _header_key(headers) or _subprotocol_key(headers) or query.get("api_key")


def _header_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-api-key")


def _offered_subprotocols(headers: Mapping[str, str]) -> list[str]:
    offered = headers.get("sec-websocket-protocol", "")
    return [name.strip() for name in offered.split(",") if name.strip()]


def _subprotocol_key(headers: Mapping[str, str]) -> str | None:
    """`bearer.<key>` (ours) or `openai-insecure-api-key.<key>` (OpenAI's Realtime clients in
    browsers, which cannot set headers)."""
    for name in _offered_subprotocols(headers):
        for prefix in (BEARER_PREFIX, OPENAI_KEY_PREFIX):
            if name.lower().startswith(prefix):
                return name[len(prefix):]
    return None


class ApiKeyMiddleware:
    """Refuses HTTP requests without the key (401). WebSockets pass through: the stream
    handler accepts them first, so it can say why in an `error` message before closing."""

    def __init__(self, app: ASGIApp, api_key: ApiKey, on_reject=None) -> None:
        self.app, self.api_key, self.on_reject = app, api_key, on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._public(scope["path"]):
            request = HTTPConnection(scope)
            if not self.api_key.allows(request.headers, request.query_params):
                if self.on_reject:
                    self.on_reject()
                response = error_response(401, "unauthorized", "missing or invalid API key")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _public(path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
