"""PEFT LoRA adapters on a loaded Hugging Face causal LM: transformers' `load_adapter` injects them,
PEFT's layer API switches them (transformers' own switches demand a newer PEFT than is released).

Every declared adapter (adapter_config.json + adapter_model.safetensors) is injected into the one
loaded base when the worker starts, QLoRA adapters onto a bitsandbytes 4-bit base included; the
base's weights are never loaded twice. The model serves one request at a time, so each generation
switches to its adapter (or disables them all for the base) under the model's lock. An adapter that
will not load (malformed, made for another architecture, other shapes) is removed again and its
requests get the reason, while the base and the other adapters keep serving.
"""

from __future__ import annotations

import logging
from typing import Any

from backends.contract import ErrorCode, InvalidInput
from backends.plan import LoraAdapter

log = logging.getLogger("modelyard.hf.lora")
_ABSENT = object()


class Loras:
    def __init__(self, model: Any, adapters: tuple[LoraAdapter, ...]):
        self._model = model
        self.declared = {a.name: a for a in adapters}
        self._loaded: list[str] = []
        self._failed: dict[str, str] = {}
        # Loading an adapter leaves its key renames on the model, which would make a later
        # save_pretrained (parking the base) write base weights under PEFT's names: keep the base's.
        conversions = model.__dict__.get("_weight_conversions", _ABSENT)
        for adapter in adapters:
            self._load(adapter)
            if conversions is _ABSENT:
                model.__dict__.pop("_weight_conversions", None)
            else:
                model._weight_conversions = conversions
        self._active: str | None = "?"  # unknown until the first use
        self.use(None)

    def _load(self, adapter: LoraAdapter) -> None:
        if not (adapter.path / "adapter_config.json").is_file():
            self._failed[adapter.name] = f"{adapter.path} is not a PEFT adapter directory (no adapter_config.json)"
            return
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its load report calls every base weight "missing" from the adapter
        try:
            self._model.load_adapter(str(adapter.path), adapter_name=adapter.name)
        except Exception as exc:  # PEFT and torch word the problem (missing modules, shapes); we name the adapter
            self._failed[adapter.name] = f"{type(exc).__name__}: {str(exc)[:600]}"
            log.warning("adapter %s (%s) did not load: %s", adapter.name, adapter.path, exc)
            self._discard(adapter.name)
            return
        finally:
            hf_logging.set_verbosity(verbosity)
        if adapter.scale != 1.0:
            self._scale(adapter.name, adapter.scale)
        self._loaded.append(adapter.name)

    def _layers(self) -> list[Any]:
        from peft.tuners.lora import LoraLayer

        return [module for module in self._model.modules() if isinstance(module, LoraLayer)]

    def _discard(self, name: str) -> None:
        """Take out what a failed load may have injected, so the base reads as before."""
        for layer in self._layers():
            if name in layer.lora_A:
                layer.delete_adapter(name)
        (getattr(self._model, "peft_config", None) or {}).pop(name, None)

    def _scale(self, name: str, scale: float) -> None:
        for layer in self._layers():
            if name in layer.scaling:
                layer.scaling[name] *= scale

    def require(self, name: str | None, model_id: str) -> None:
        """InvalidInput unless a request may use `name` (None: the base)."""
        if name is None or name in self._loaded:
            return
        if name in self._failed:
            raise InvalidInput(f"adapter {name!r} of model {model_id} failed to load: {self._failed[name]}",
                               param="model", code=ErrorCode.ADAPTER_LOAD_FAILED)
        raise InvalidInput(f"model {model_id} has no adapter {name!r}", param="model")

    def use(self, name: str | None) -> None:
        """Generate with adapter `name` from now on (None: the base, every adapter disabled)."""
        if name == self._active or not self._loaded:
            self._active = name
            return
        for layer in self._layers():
            if name is None:
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                layer.set_adapter(name)
        self._active = name

    def state(self) -> dict[str, str]:
        return {name: "loaded" if name in self._loaded else f"failed: {self._failed.get(name, '?')}"
                for name in self.declared}

    def remove(self) -> None:
        """Take every adapter out and put the base's own modules back where PEFT wrapped them, so the
        model saves (parks) as the base checkpoint it was loaded from."""
        layers = set(map(id, self._layers()))
        wrapped = [(name, module) for name, module in self._model.named_modules() if id(module) in layers]
        for name, module in wrapped:
            parent_name, _, child = name.rpartition(".")
            setattr(self._model.get_submodule(parent_name) if parent_name else self._model, child,
                    module.get_base_layer())
        self._model._hf_peft_config_loaded = False  # else save_pretrained would write the adapters alone
        self._model.__dict__.pop("peft_config", None)
        self._loaded.clear()
        self._active = None
