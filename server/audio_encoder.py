"""Synthesised speech -> the formats OpenAI's /v1/audio/speech returns, encoded as it arrives.

PyAV (FFmpeg's libraries) encodes in the HTTP process, writing to a sink that hands back each
piece as soon as the muxer emits it, so the first sentence's audio can be on the wire while the
next is being synthesised. Output is mono at 24 kHz, OpenAI's rate (`pcm` is raw 16-bit
little-endian at 24 kHz, as its API documents). Streamed WAV carries "unknown length" sizes in its
header, as FFmpeg writes for unseekable output. Engines without a speaking rate of their own are
time-stretched here with FFmpeg's atempo filter (pitch kept).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import numpy as np

AudioFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
OUTPUT_RATE = 24000
# format -> (FFmpeg muxer, encoder, muxer options, media type)
_FORMATS: dict[str, tuple[str, str, dict[str, str], str]] = {
    "mp3": ("mp3", "libmp3lame", {}, "audio/mpeg"),
    "opus": ("ogg", "libopus", {"page_duration": "20000"}, "audio/ogg"),  # 20 ms pages: no 1 s buffering
    "aac": ("adts", "aac", {}, "audio/aac"),
    "flac": ("flac", "flac", {}, "audio/flac"),
    "wav": ("wav", "pcm_s16le", {"fflags": "+bitexact"}, "audio/wav"),
    "pcm": ("s16le", "pcm_s16le", {}, "audio/pcm"),
}


def media_type(fmt: AudioFormat) -> str:
    return _FORMATS[fmt][3]


class _Sink:
    """An unseekable file for the muxer: what it writes is taken away piece by piece."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


class AudioEncoder:
    """feed() mono float32 samples as they come; each call returns the encoded bytes ready so far,
    and finish() the rest."""

    def __init__(self, fmt: AudioFormat):
        import av

        self._av = av
        muxer, codec, options, _ = _FORMATS[fmt]
        self._sink = _Sink()
        self._container = av.open(self._sink, "w", format=muxer, options=options)
        self._stream = self._container.add_stream(codec, rate=OUTPUT_RATE)
        self._stream.layout = "mono"
        self._resampler = av.AudioResampler(format=self._stream.codec_context.format.name, layout="mono",
                                            rate=OUTPUT_RATE)
        self._tempo: _Tempo | None = None
        self._input_rate: int | None = None
        self.seconds_in = 0.0  # audio fed, before any time-stretch

    def feed(self, samples: np.ndarray, sample_rate: int, tempo: float = 1.0) -> bytes:
        if self._input_rate is None:
            self._input_rate = sample_rate
            if abs(tempo - 1.0) > 1e-6:
                self._tempo = _Tempo(self._av, sample_rate, tempo)
        elif sample_rate != self._input_rate:
            raise ValueError(f"sample rate changed mid-stream ({self._input_rate} -> {sample_rate})")
        self.seconds_in += samples.size / sample_rate
        frame = self._av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32)[None, :],
                                                 format="flt", layout="mono")
        frame.sample_rate = sample_rate
        frames = self._tempo.push(frame) if self._tempo else [frame]
        for piece in frames:
            self._encode(piece)
        return self._sink.take()

    def finish(self) -> bytes:
        if self._tempo:
            for piece in self._tempo.push(None):
                self._encode(piece)
        self._encode(None)
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()

    def _encode(self, frame) -> None:
        for out in self._resampler.resample(frame):
            for packet in self._stream.encode(out):
                self._container.mux(packet)


class _Tempo:
    """FFmpeg's atempo filter chain (each stage handles 0.5..2.0; 0.25 and 4.0 take two)."""

    def __init__(self, av, sample_rate: int, tempo: float):
        self._graph = av.filter.Graph()
        source = self._graph.add_abuffer(format="flt", sample_rate=sample_rate, layout="mono",
                                          time_base=f"1/{sample_rate}")
        previous = source
        for stage in _stages(tempo):
            node = self._graph.add("atempo", f"{stage:.6f}")
            previous.link_to(node)
            previous = node
        sink = self._graph.add("abuffersink")
        previous.link_to(sink)
        self._graph.configure()
        self._pts = 0

    def push(self, frame) -> list:
        if frame is not None:
            frame.pts, frame.time_base = self._pts, Fraction(1, frame.sample_rate)
            self._pts += frame.samples
        self._graph.push(frame)
        frames = []
        while True:
            try:
                frames.append(self._graph.pull())
            except (self._graph_errors()):
                return frames

    @staticmethod
    def _graph_errors() -> tuple[type[BaseException], ...]:
        import av

        return (av.BlockingIOError, av.EOFError)


def _stages(tempo: float) -> list[float]:
    stages = []
    while tempo > 2.0:
        stages.append(2.0)
        tempo /= 2.0
    while tempo < 0.5:
        stages.append(0.5)
        tempo /= 0.5
    return [*stages, tempo]
