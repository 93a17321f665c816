"""All settings in one place, read from flags or `WHISPER_SERVICE_*` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "whisper-service"


class Settings(BaseSettings):
    """Service settings; every field can be set as WHISPER_SERVICE_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="WHISPER_SERVICE_", extra="ignore")

    # Models
    default_model: str = "base"
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = Field(default=0, ge=0, description="threads per decode; 0: automatic")
    num_workers: int = Field(default=0, ge=0, description="parallel decodes per model; 0: "
                             "one for the CLI, one per CPU core for the server")
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    max_loaded_models: int = Field(default=0, ge=0, description="0 means no cap")
    model_idle_ttl_s: float = Field(default=0.0, ge=0, description="0 means never evict")

    # Streaming
    min_chunk_s: float = Field(default=0.7, gt=0)
    stream_beam_size: int = Field(default=5, ge=1, le=10)
    max_buffer_s: float = Field(default=15.0, gt=2)
    max_context_tokens: int = Field(default=223, ge=1, le=223)

    # Server
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: str | None = None
    max_sessions: int = Field(default=16, ge=1)
    max_session_s: float = Field(default=3600.0, gt=0)
    idle_timeout_s: float = Field(default=30.0, gt=0)
    max_ws_message_bytes: int = Field(default=1 << 20, ge=1024)
    max_upload_bytes: int = Field(default=100 << 20, ge=1024)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
