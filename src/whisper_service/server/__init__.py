"""The HTTP and WebSocket server: an app factory and small modules, one per concern.

- `app`: wiring (lifespan, middleware, routers); `run`: uvicorn with a graceful drain;
- `service`: what routes share (settings, models, metrics, open sessions);
- `auth`, `errors`: the API key and error bodies;
- `openai`: OpenAI-compatible HTTP routes; `health`: page, health, ready, metrics;
- `stream`: the WebSocket stream handler.
"""

from .app import create_app
from .run import run

__all__ = ["create_app", "run"]
