"""Live streaming: a session per client, from pushed audio to `partial`, `final` and
`utterance` events. See docs/architecture.md for the data path through these modules."""

from .events import StreamEvent
from .options import StreamOptions
from .redecode import SessionCancelled
from .replay import ReplayMode, SkippingClock, replay
from .session import StreamingSession

__all__ = ["ReplayMode", "SessionCancelled", "SkippingClock", "StreamEvent", "StreamOptions",
           "StreamingSession", "replay"]
