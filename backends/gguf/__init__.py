"""GGUF models through llama-cpp-python: chat, completions with fill-in-the-middle, embeddings."""
