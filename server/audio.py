"""Uploaded audio -> 16 kHz mono float32, with PyAV (FFmpeg's libraries), no shell, no external program.

Hardening item 10: the upload is never written under a client-chosen name; the decoded samples go
to a server-generated name in a private (0700) temp dir. Only audio demuxers are allowed (no
playlist or concat demuxer can make FFmpeg open other files or URLs), only the file protocol, and
decoding stops at a duration cap and a wall-clock cap.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np

SAMPLE_RATE = 16000
# FFmpeg demuxer names for wav, flac, mp3, ogg/opus, m4a/mp4, webm/mkv, aac, aiff.
DEMUXERS = "wav,flac,mp3,ogg,mov,mp4,m4a,matroska,webm,aac,aiff"
DECODE_WALL_SECONDS = 120.0


class AudioError(Exception):
    """The upload is not audio we can decode, or is too long (a 400 with param 'file')."""


class ScratchDir:
    """A private temp dir for decoded audio, removed at shutdown."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="modelyard-audio-"))  # mkdtemp: mode 0700

    def new_file(self, suffix: str) -> Path:
        return self.path / f"{secrets.token_hex(16)}{suffix}"

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def decode(source: BinaryIO, max_seconds: float) -> np.ndarray:
    """Decode the first audio stream, resampled to 16 kHz mono float32; AudioError when it cannot."""
    import av

    limit = int(max_seconds * SAMPLE_RATE)
    started = time.monotonic()
    try:
        container = av.open(source, mode="r", options={"format_whitelist": DEMUXERS,
                                                       "protocol_whitelist": "file"})
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise AudioError(f"could not read the file as audio ({_reason(exc)})") from None
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioError("the file has no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in [*resampler.resample(frame)]:
                    samples = out.to_ndarray().reshape(-1)
                    total += samples.size
                    chunks.append(samples)
                if total > limit:
                    raise AudioError(f"the audio is longer than this model's limit of {max_seconds:g} seconds")
                if time.monotonic() - started > DECODE_WALL_SECONDS:
                    raise AudioError("decoding the audio took too long")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except (av.FFmpegError, ValueError, OSError, RuntimeError) as exc:
        raise AudioError(f"could not decode the audio ({_reason(exc)})") from None
    audio = np.concatenate(chunks).astype("<f4", copy=False) if chunks else np.zeros(0, dtype="<f4")
    if audio.size == 0:
        raise AudioError("the file holds no audio samples")
    if audio.size > limit:
        raise AudioError(f"the audio is longer than this model's limit of {max_seconds:g} seconds")
    return audio


def _reason(exc: Exception) -> str:
    # FFmpeg messages may quote paths; keep only the error's kind and its first words.
    text = str(exc).split(":")[0][:80]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
