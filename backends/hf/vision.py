"""Hugging Face vision-language models: LLaVA 1.5, LLaVA-NeXT, BLIP-2 and InstructBLIP, in fp16/bf16/fp32
or bitsandbytes 4/8-bit, each read through its own processor and chat template.

The text adapter's decode loop (adapter.py) serves them unchanged: the processor turns the rendered
prompt and the request's images into token ids (image tokens expanded) and pixel inputs; the first
decode step reads them through the whole model, and every later step feeds one token to the model
that generates text (LLaVA itself; BLIP-2's language model, since the Q-Former needs the pixels
each time it runs). The KV cache is the dynamic one, which takes any prompt shape.
"""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path
from typing import Any

from backends import bundle, text
from backends.contract import Cancel, ChatParams, Chunks, InvalidInput, TokenizeParams
from backends.gguf.vision import image_slots
from backends.hf.adapter import HfTextAdapter
from backends.hf.plan import HfVisionPlan

# BLIP-2 checkpoints ship no chat template; this is the prompt they were tuned on.
BLIP_TEMPLATE = (
    "{% for message in messages %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% if message['role'] == 'assistant' %}{{ ' ' + content['text'] + '\\n' }}{% else %}"
    "{{ 'Question: ' + content['text'] + ' ' }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Answer:' }}{% endif %}"
)


class VisionDecoder:
    """backends/hf/decode.py's Decoder for a vision model: the prompt step with the pixel inputs
    through the whole model, then one token at a time through the text model, on a dynamic cache."""

    graphs = False

    def __init__(self, torch: Any, model: Any, text_model: Any):
        import inspect

        self.torch, self.model, self.text_model = torch, model, text_model
        accepted = inspect.signature(text_model.forward).parameters
        self.cache_arg = "cache" if "cache" in accepted else "past_key_values"
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self.prompt_inputs: dict[str, Any] | None = None  # set per request, under the model's lock
        self._cache = None

    def begin(self) -> None:
        self._cache = None

    def step(self, input_ids: Any) -> Any:
        with self.torch.inference_mode():
            if self._cache is None and self.prompt_inputs:
                out = self.model(input_ids=input_ids, **self.prompt_inputs, use_cache=True)
                self.prompt_inputs = None
                found = getattr(out, "language_model_outputs", None) or out  # BLIP-2 keeps its LM's output apart
            else:
                found = out = self.text_model(input_ids=input_ids, use_cache=True, **{self.cache_arg: self._cache},
                                              **self.extra)
        self._cache = getattr(found, "cache", None) or getattr(found, "past_key_values", None)
        return out.logits[0, -1].float()


class HfVisionAdapter(HfTextAdapter):
    plan: HfVisionPlan
    batches = False  # the prompt step reads the request's pixels through the decoder: one request at a time

    def __init__(self, plan: HfVisionPlan):
        super().__init__(plan)
        import transformers

        self.processor = transformers.AutoProcessor.from_pretrained(plan.path, local_files_only=True,
                                                                    trust_remote_code=False)
        source = plan.chat_template or getattr(self.processor, "chat_template", None) or self.tokenizer.chat_template
        if source is None and plan.query_model:
            source = BLIP_TEMPLATE
        self.template = text.ChatTemplate(source)
        # BLIP's processor puts an image's query tokens before the prompt; LLaVA's expands the image
        # token where the template put it.
        self.image_marker = "" if plan.query_model else getattr(self.processor, "image_token", "<image>")
        if plan.query_model:
            self.text_model = self.model.language_model
        self.decoder = VisionDecoder(self._torch, self.model, self.text_model)
        self._vision_lock = threading.Lock()  # held around a whole chat: its pixel inputs are the decoder's
        self._images = 0

    def _model_class(self, transformers):
        return transformers.AutoModelForImageTextToText

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "images": self._images}

    def park(self, dest: Path) -> int:
        size = super().park(dest)
        with self._lock:
            self.processor.save_pretrained(dest)
        return max(size, bundle.size_of(dest))

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        special = {name: getattr(self.tokenizer, name, None) or "" for name in
                   ("bos_token", "eos_token", "unk_token", "pad_token")}
        return self.template.render(messages, tools, self.image_marker, **special)

    def chat(self, params: ChatParams, cancel: Cancel) -> Chunks:
        ids, inputs, images = self._processed(params.messages, params.tools, params.images)
        pixels = {name: self._on_device(value) for name, value in inputs.items()} if images else None
        top = params.top_logprobs if params.logprobs else None
        with cancel.holding(self._vision_lock):
            self.decoder.prompt_inputs = pixels
            self._images += len(images)
            try:
                return (yield from self._generate(ids, params, cancel, top, "messages"))
            finally:
                self.decoder.prompt_inputs = None

    def tokenize(self, params: TokenizeParams, cancel: Cancel) -> Chunks:
        """Messages as the processor reads them, images expanded into their tokens."""
        if params.messages is None:
            return (yield from super().tokenize(params, cancel))
        yield from ()
        ids, _, _ = self._processed(params.messages, params.tools, params.images)
        return {"tokens": ids, "pieces": [self.tokenizer.decode([i]) for i in ids]}

    def _processed(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                   pngs: list[str]) -> tuple[list[int], dict[str, Any], list[Any]]:
        """The prompt's token ids (image tokens expanded), the processor's pixel inputs, the images."""
        prompt = self.render(messages, tools)
        text.check_bytes(prompt, self.context, self.longest_token_bytes, "messages")
        images = [_image(pngs, index) for index in image_slots(messages)]
        if len(images) > self.plan.max_images:
            raise InvalidInput(f"model {self.model_id} reads at most {self.plan.max_images} images per request",
                               param="messages")
        bos = self.tokenizer.bos_token or ""
        inputs = self.processor(text=prompt, images=images or None, return_tensors="pt",
                                add_special_tokens=not (bos and prompt.startswith(bos)))
        ids = inputs.pop("input_ids")[0].tolist()
        inputs.pop("attention_mask", None)
        return ids, dict(inputs), images

    def _on_device(self, value: Any) -> Any:
        """Pixel inputs on the model's device, floats in its dtype (a bitsandbytes model computes in its own)."""
        value = value.to(self.model.device)
        if value.is_floating_point():
            value = value.to(self.model.dtype)
        return value


def _image(images: list[str], index: int):
    from PIL import Image

    if not 0 <= index < len(images):
        raise InvalidInput(f"an image part points at image {index}; the request carries {len(images)}",
                           param="messages")
    return Image.open(io.BytesIO(base64.b64decode(images[index]))).convert("RGB")
