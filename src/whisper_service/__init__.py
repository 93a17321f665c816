"""Whisper Service: self-hosted real-time speech-to-text on Whisper."""

import os

# onnxruntime (the Silero VAD) sends usage telemetry to Microsoft on Linux since 1.29 and
# writes a device id under ~/.cache; a self-hosted service sends nothing anywhere. Set before
# any module imports onnxruntime.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
