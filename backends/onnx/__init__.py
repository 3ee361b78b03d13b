"""ONNX Runtime: embeddings and rerank from ONNX exports (sentence-transformers / optimum layout)."""
