"""The engine: models loaded once and shared, and the one call that decodes on them.

- `manager.ModelManager`: resolves a name to weights, loads each model once per process,
  shares it by reference count, unloads and evicts;
- `model.LoadedModel`: one loaded model, its decode slots and its batch scheduler;
- `decoder.Decoder`: `decode(DecodeRequest) -> Transcript`, the one call from a session, an
  upload or the CLI to a model, and `warm_up`;
- `windows`: streaming windows made ready and decoded as one batch;
- `scheduler.BatchScheduler`: the windows of many sessions, earliest due first, in batches;
- `features`: Whisper's features in bounded working memory.

What a decode takes and gives (`DecodeRequest`, `Transcript`) is plain data in
`whisper_service.transcript`, so nothing above the engine needs the engine to read it.
"""

from .decoder import Decoder, warm_up
from .manager import ModelInUseError, ModelManager
from .model import LoadedModel, ModelKey

__all__ = ["Decoder", "LoadedModel", "ModelInUseError", "ModelKey", "ModelManager", "warm_up"]
