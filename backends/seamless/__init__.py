"""SeamlessM4T v2: speech to text, speech to English text, and text to speech from one resident model."""
