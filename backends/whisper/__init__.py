"""Whisper speech-to-text on faster-whisper (CTranslate2)."""
