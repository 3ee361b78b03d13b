"""Tiny ONNX models in the sentence-transformers / optimum layout: the tiny BERT embedder and the tiny
cross-encoder (tinymodels/hf.py) exported with torch.onnx, each with its tokenizer files beside
`model.onnx`; the embedder also as `model_quantized.onnx` (dynamic int8). Same weights as the Hugging
Face models, so the ONNX Runtime engine can be held to the same outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

from tinymodels import hf
from tinymodels.media import _atomic

EMBED_DIR, RERANK_DIR = "tiny-embed-onnx", "tiny-rerank-onnx"
_COPIED = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build(root: Path) -> None:
    root = Path(root)
    hf.build(root)
    _atomic(root / EMBED_DIR, lambda out: _export(root / hf.EMBED_DIR, out, quantize=True))
    _atomic(root / RERANK_DIR, lambda out: _export(root / hf.RERANK_DIR, out, quantize=False))


def _export(source: Path, out: Path, quantize: bool) -> None:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    out.mkdir(parents=True)
    reranker = "ForSequenceClassification" in (source / "config.json").read_text()
    model = (AutoModelForSequenceClassification if reranker else AutoModel).from_pretrained(source).eval()

    class Graph(torch.nn.Module):
        """input_ids and attention_mask in; the hidden states (embedder) or the logits (reranker) out."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            result = self.model(input_ids=input_ids, attention_mask=attention_mask)
            return result.logits if reranker else result.last_hidden_state

    example = (torch.tensor([[2, 40, 41, 3], [2, 42, 3, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]))
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    torch.onnx.export(Graph().eval(), example, str(out / "model.onnx"), dynamo=True, opset_version=18,
                      input_names=["input_ids", "attention_mask"],
                      output_names=["logits" if reranker else "last_hidden_state"], external_data=False,
                      dynamic_shapes={"input_ids": {0: batch, 1: sequence},
                                      "attention_mask": {0: batch, 1: sequence}})
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(out / "model.onnx"), str(out / "model_quantized.onnx"), weight_type=QuantType.QInt8)
    for name in _COPIED:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
