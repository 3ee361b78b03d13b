"""Every engine modelyard can serve: one line each. Adding an engine is adding its package
(spec.py and adapter.py, see docs/architecture.md) and its spec class here."""

from __future__ import annotations

from backends.diffusion.spec import DiffusionSpec
from backends.fake.spec import FakeSpec
from backends.gguf.spec import GgufSpec
from backends.hf.spec import HfSpec
from backends.onnx.spec import OnnxSpec
from backends.seamless.spec import SeamlessSpec
from backends.spec import BaseSpec
from backends.vits.spec import VitsSpec
from backends.wav2vec2.spec import Wav2Vec2Spec
from backends.whisper.spec import WhisperSpec

SPECS: tuple[type[BaseSpec], ...] = (
    FakeSpec,
    GgufSpec,
    HfSpec,
    DiffusionSpec,
    WhisperSpec,
    Wav2Vec2Spec,
    SeamlessSpec,
    VitsSpec,
    OnnxSpec,
)

