"""All settings in one place: defaults and bounds, read from `WHISPER_SERVICE_*` variables.

Everything else (the server, the CLI, streaming sessions) takes its values from `Settings`,
so a value is validated once, when the settings are made, and every consumer agrees on it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import Field, FilePath, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .context import WHISPER_MAX_PROMPT_TOKENS

ENV_PREFIX = "WHISPER_SERVICE_"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "whisper-service"


class Settings(BaseSettings):
    """Service settings; every field can be set as WHISPER_SERVICE_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore",
                                      validate_default=True)

    # Models
    default_model: str = Field("base", description="model used when none is named")
    device: str = Field("cpu", description="`cpu` or `cuda`, passed through to CTranslate2")
    compute_type: str = Field("int8", description="e.g. `int8`, `float16` (GPU), "
                              "`int8_float16`")
    cpu_threads: int = Field(0, ge=0, description="threads per decode; 0: 1 when there are "
                             "several workers, else CTranslate2's default")
    num_workers: int = Field(0, ge=0, description="decodes that run in parallel on one model; "
                             "0: one per CPU core for `serve`, one for the CLI")
    cache_dir: Path = Field(default_factory=_default_cache_dir,
                            description="assembled and downloaded models (default "
                            "`$XDG_CACHE_HOME/whisper-service` or "
                            "`~/.cache/whisper-service`)")
    models: str = Field("", description="comma-separated models clients may request (names, "
                        "local paths or hub names); empty: the bundled ones. The default model "
                        "is always allowed, nothing else is loaded for a client, and "
                        "`GET /v1/models` lists exactly these")
    max_loaded_models: int = Field(0, ge=0, description="evict the least recently used idle "
                                   "model past this; 0: no cap")
    model_idle_ttl_s: float = Field(0.0, ge=0, description="unload models nobody used for "
                                    "this long; 0: never")

    # Streaming (the choices are measured by bench/accuracy.py on real speech, and by
    # bench/streaming.py and bench/capacity.py: docs/benchmarks.md)
    min_chunk_s: float = Field(0.6, ge=0.1, le=5, description="new audio (s) before a "
                               "streaming session re-decodes while the model is busy")
    idle_chunk_s: float = Field(0.4, ge=0.1, le=5, description="new audio (s) before a "
                                "streaming session re-decodes while the model is idle "
                                "(nothing queued, workers busy less than half the time); "
                                "a value over `min_chunk_s` counts as `min_chunk_s`")
    stream_beam_size: int = Field(5, ge=1, le=10, description="beam size for streaming "
                                  "decodes while the model is idle (nothing queued, no "
                                  "batch)")
    stream_busy_beam_size: int = Field(1, ge=1, le=10, description="beam size for streaming "
                                       "decodes while the model is busy (a batch of two or "
                                       "more, or windows waiting)")
    stream_unsure_probability: float = Field(0.3, ge=0, le=1, description="after steps of "
                                             "`idle_chunk_s`, a word the model gives a lower "
                                             "probability than this needs three agreeing "
                                             "decodes to become final, not two (0: two for "
                                             "every word)")
    max_buffer_s: float = Field(15.0, ge=2, le=30, description="cap on the audio a session "
                                "re-decodes (Whisper's window is 30 s)")
    max_context_tokens: int = Field(WHISPER_MAX_PROMPT_TOKENS, ge=1,
                                    le=WHISPER_MAX_PROMPT_TOKENS,
                                    description="rolling prompt size (static prompt + "
                                    "committed text), in tokens")
    utterances: bool = Field(True, description="decode each utterance once more as a whole "
                             "after its finals and send it as `utterance` (finals unchanged); "
                             "a client's config can override it")
    utterance_beam_size: int = Field(5, ge=1, le=10, description="beam size of the utterance "
                                     "decodes while the model is idle")
    utterance_busy_beam_size: int = Field(2, ge=1, le=10, description="beam size of the "
                                          "utterance decodes while the model is busy; they "
                                          "are padded as the steps' windows then, not to "
                                          "Whisper's 30 s")
    utterance_min_s: float = Field(10.0, ge=0, le=28, description="a pause closes an "
                                   "utterance once it spans this long; a shorter one goes on "
                                   "through pauses of up to 2 s, so that its second decode "
                                   "hears more (0: every pause closes one; the Realtime API's "
                                   "turns always do)")
    window_pad_s: float = Field(10.0, ge=5, le=30, description="streaming windows are "
                                "padded to the next multiple of this for the encoder, not "
                                "always to Whisper's 30 s (shorter ones made tiny.en repeat "
                                "itself)")

    # Batching: the windows of many sessions decoded together (bench/capacity.py)
    batching: bool = Field(True, description="decode the windows of concurrent streams in "
                           "batches; off: each alone")
    max_batch_size: int = Field(8, ge=1, le=64, description="windows in one batch")
    batch_beam_size: int = Field(0, ge=0, le=10, description="the most any window is decoded "
                                 "at under load (in a batch of two or more, or with windows "
                                 "waiting); 0: no cap (streams' windows take "
                                 "`stream_busy_beam_size`, utterances keep their beam); 1: "
                                 "greedy, cheaper, and transcripts under load lose a few words")
    batch_wait_ms: float = Field(20.0, ge=0, le=500, description="longest wait for a batch "
                                 "to fill when several windows are pending (none for one)")

    # Server
    host: str = Field("127.0.0.1", description="where `serve` listens (`--host`)")
    port: int = Field(8000, ge=0, le=65535, description="where `serve` listens (`--port`)")
    forwarded_allow_ips: str = Field("127.0.0.1", description="proxies trusted to name the "
                                     "client in `X-Forwarded-For` (rate limits and limits per "
                                     "client by address); comma-separated, or `*` behind a "
                                     "private load balancer")
    api_key: str | None = Field(None, description="when set, every endpoint but `/health`, "
                                "`/ready` and the page needs it; several keys: comma-separated "
                                "(`Authorization: Bearer`, `X-API-Key`; `?api_key=` works but "
                                "ends up in proxies' logs)")
    api_keys_file: FilePath | None = Field(None, description="more keys, one a line (blank "
                                           "lines and `#` comments skipped); the server "
                                           "refuses to start if it cannot read the file or "
                                           "it holds no key")
    ticket_ttl_s: float = Field(30.0, gt=0, le=3600, description="how long a single-use "
                                "WebSocket ticket (`POST /v1/stream/ticket`) stays valid")
    max_sessions: int = Field(16, ge=1, description="concurrent streaming sessions "
                              "(`--max-sessions`); more get `server_busy`")
    max_lag_s: float = Field(3.0, gt=0, description="new streams get `server_busy` while the "
                             "server is this late with the open ones, on average: seconds "
                             "since their oldest unheard audio was due (audio a client sends "
                             "ahead of real time is due only when real time reaches it)")
    max_ahead_s: float = Field(120.0, ge=5, le=3600, description="audio a stream may have "
                               "sent that the server has not heard yet; past it the server "
                               "stops reading the client's socket until it catches up "
                               "(backpressure, not a refusal)")
    max_session_s: float = Field(3600.0, gt=0, description="longest streaming session "
                                 "(`session_too_long`)")
    config_timeout_s: float = Field(5.0, ge=0.5, le=60, description="a WebSocket that has "
                                    "not sent its config (`/v1/stream`) or first event "
                                    "(`/v1/realtime`) this long after opening is closed "
                                    "(`config_timeout`, 1008); until then it holds no session "
                                    "slot")
    max_pending_sockets: int = Field(256, ge=1, description="WebSockets waiting for their "
                                     "config, apart from the sessions; past it the oldest "
                                     "waiting one is closed to make room (`config_timeout`)")
    max_pending_per_client: int = Field(16, ge=0, description="WebSockets one client may "
                                        "have waiting for their config; more get "
                                        "`too_many_pending` (1013); 0: no limit. A client is "
                                        "its API key when it presents one, else its address")
    max_streams_per_client: int = Field(8, ge=0, description="streaming sessions one client "
                                        "may have open; more get `too_many_streams` (1013); "
                                        "0: no limit. A client is its API key when it "
                                        "presents one, else its address")
    idle_timeout_s: float = Field(30.0, gt=0, description="a stream with no message for "
                                  "this long is finalized and closed (`idle_timeout`)")
    drain_timeout_s: float = Field(10.0, gt=0, le=600, description="on SIGTERM, how long open "
                                   "streams get to send their last finals and `done`; the "
                                   "process exits within this plus 5 s (`/ready` answers 503 "
                                   "meanwhile)")
    max_ws_message_bytes: int = Field(1 << 20, ge=1024, description="largest WebSocket "
                                      "message (`message_too_large`, 1009)")
    max_file_jobs: int = Field(2, ge=1, description="file transcriptions that run at once "
                               "(each holds one chunk of audio; the decode workers are shared "
                               "with the streams)")
    max_file_queue: int = Field(8, ge=0, description="file transcriptions that may wait for a "
                                "turn; more get 503 `server_busy` with `Retry-After`")
    rate_limit_per_minute: float = Field(0.0, ge=0, description="requests per minute per API "
                                         "key (or address without one) on uploads, tickets and "
                                         "stream opens; more get 429 `rate_limited` with "
                                         "`Retry-After`; 0: no limit")
    rate_limit_burst: int = Field(10, ge=1, description="requests a client may make at once "
                                  "before the rate limit applies")
    max_upload_bytes: int = Field(100 << 20, ge=1024, description="largest file upload (413 "
                                  "`file_too_large`, cut off as it arrives)")
    upload_timeout_s: float = Field(600.0, ge=1, le=86400, description="longest time an "
                                    "upload's body may take to arrive (408 `upload_timeout`); "
                                    "a body holds a connection while it arrives, never a "
                                    "file-job slot")
    # Bytes do not bound audio (a small FLAC can hold hours of silence), so files are decoded
    # and transcribed a chunk at a time (bench/uploads.py).
    max_audio_s: float = Field(4 * 3600.0, gt=0, description="longest audio a file may hold, "
                               "in seconds; longer gets 413 `audio_too_long`, found while "
                               "decoding, before the file is in memory")
    file_chunk_s: float = Field(120.0, ge=30, le=3600, description="files are decoded and "
                                "transcribed this many seconds at a time, each chunk cut in a "
                                "pause (memory per file: that of a chunk)")
    file_decoding: Literal["batched", "sequential"] = Field(
        "batched", description="`batched`: a file's speech is cut into windows of up to 30 s "
        "and decoded many at once, each without the text before it; `sequential`: window "
        "after window, each prompted with the text before it (slower; names spelled alike "
        "across the file). A request without VAD (`--no-vad`), or with a prompt or hotwords, is "
        "decoded sequentially")

    @model_validator(mode="after")
    def _chunk_fits_buffer(self) -> Settings:
        if self.min_chunk_s > self.max_buffer_s / 2:
            raise ValueError(f"min_chunk_s ({self.min_chunk_s}) must be at most half of "
                             f"max_buffer_s ({self.max_buffer_s})")
        return self

    def override(self, **changes: Any) -> Settings:
        """A validated copy with some fields changed (flags over the environment)."""
        return type(self).model_validate({**self.model_dump(), **changes})


def settings_table() -> str:
    """docs/configuration.md's table, made from the fields above (their one description):
    `python -m whisper_service.config` prints it."""
    rows = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {_default(field)} | {_bounds(field)} "
                    f"| {field.description} |")
    return "\n".join(rows) + "\n"


def _default(field: Any) -> str:
    if field.default_factory is not None:
        return "see meaning"
    if field.default is None:
        return "unset"
    if field.default == "":
        return "empty"
    value = str(field.default).lower() if isinstance(field.default, bool) else field.default
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _bounds(field: Any) -> str:
    """The field's bounds as written in its declaration (`ge`, `gt`, `le`), or its choices."""
    if get_origin(field.annotation) is Literal:
        return ", ".join(f"`{choice}`" for choice in get_args(field.annotation))
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    parts = [f"{signs[key]} {getattr(meta, key):g}" for meta in field.metadata
             for key in signs if getattr(meta, key, None) is not None]
    return ", ".join(parts) or "–"


def describe_error(exc: ValidationError, flags: dict[str, str] | None = None) -> str:
    """One line naming the variable (or the command-line flag) and the problem."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    where = (flags or {}).get(field) or (f"{ENV_PREFIX}{field.upper()}" if field else "settings")
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


if __name__ == "__main__":
    print(settings_table(), end="")
