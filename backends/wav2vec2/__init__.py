"""Speech-to-text with Wav2Vec 2.0 CTC models (transformers' Wav2Vec2ForCTC)."""
