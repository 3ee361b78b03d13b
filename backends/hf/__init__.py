"""Hugging Face transformers text models: fp16/bf16/fp32, bitsandbytes 4/8-bit, GPTQ."""
