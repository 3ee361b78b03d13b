"""Text-to-speech with VITS / MMS-TTS (transformers' VitsModel)."""
