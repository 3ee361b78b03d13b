"""What a model can be asked to do; routes check this before leasing a model."""

from enum import StrEnum


class Capability(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"
    IMAGE = "image"
    TRANSCRIPTION = "transcription"
    SPEECH = "speech"
    RERANK = "rerank"
    VISION = "vision"  # chat messages may carry images
