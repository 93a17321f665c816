"""Keys and tickets out of the server's logs (and one line of uvicorn's noise).

uvicorn logs every request path with its query string (`uvicorn.access`) and every WebSocket
handshake likewise (`uvicorn.error`, which at debug level also gets the handshake's headers
from `websockets`). Clients that still send `?api_key=` would otherwise leave the key there.
"""

from __future__ import annotations

import logging
import re

REDACTED = "***"
LOGGERS = ("uvicorn.access", "uvicorn.error")

_PATTERNS = (
    # ?api_key=… / &ticket=… (also a percent-encoded `_`, which Starlette decodes too)
    (re.compile(r"(?i)(?<![\w%-])(api(?:_|%5f)key|ticket)=[^&\s\"'#]*"), rf"\1={REDACTED}"),
    # Sec-WebSocket-Protocol: whisper-service, bearer.<key>
    (re.compile(r"(?i)\b(bearer\.)[^\s,\"']+"), rf"\1{REDACTED}"),
    # Authorization: Bearer <key>, X-API-Key: <key> (websockets' debug dump of the handshake)
    (re.compile(r"(?i)\b(authorization:\s*(?:[a-z]+\s+)?|x-api-key:\s*)[^\s\"']+"),
     rf"\1{REDACTED}"),
)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites keys and tickets in a record to `***`.

    Each string argument is redacted in place, so the args keep their shape (uvicorn's access
    formatter unpacks `(client_addr, method, full_path, http_version, status_code)`). A
    secret that only appears once the message is formatted, such as a header name and its
    value in two arguments, replaces the message with its redacted, formatted text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg
                                for arg in record.args)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # logging reports the bad format itself
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


class DenialNoise(logging.Filter):
    """Drops uvicorn's "ASGI callable returned without completing handshake." error.

    uvicorn 0.54's websockets protocol logs it after a WebSocket denial response it has sent
    in full (its handshake flag stays unset). The stream handler returns without accepting only
    to deny a handshake with 503 while draining, so the line would alarm operators for nothing
    on every replica shutdown."""

    MESSAGE = "ASGI callable returned without completing handshake."

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != self.MESSAGE


def install_log_filters(loggers: tuple[str, ...] = LOGGERS) -> None:
    """Idempotent. Logger filters survive uvicorn's own logging set-up (dictConfig keeps
    them), so installing before uvicorn starts, as the app factory does, is enough."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
    error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DenialNoise) for f in error.filters):
        error.addFilter(DenialNoise())
