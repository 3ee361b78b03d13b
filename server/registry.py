"""models.yaml -> typed model specs: the discriminated union of the engines' specs, by `backend`.

What each engine decides at load time and how much memory it needs live in its own package
(backends/<engine>/spec.py); this module only reads the file, checks names and paths, and finds a
model by the name a client sends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import Field, TypeAdapter, ValidationError

from backends.capability import Capability
from backends.engines import SPECS
from backends.spec import BaseSpec
from server.errors import ModelNotFound, UnsupportedCapability
from server.protocol.models import ADAPTER_CAPABILITIES

ModelSpec = Annotated[Union[SPECS], Field(discriminator="backend")]  # noqa: UP007 (a tuple of classes)
_SPEC_ADAPTER: TypeAdapter = TypeAdapter(ModelSpec)


class RegistryError(Exception):
    """models.yaml is unusable; the message names the file, the model and the field."""


def parse_spec(entry: dict[str, Any]) -> BaseSpec:
    """One models.yaml entry as its engine's spec (pydantic's ValidationError if it is not one)."""
    return _SPEC_ADAPTER.validate_python(entry)


class Registry:
    """The models a client may ask for, by id or alias; a model's LoRA adapters by `<model>:<name>`
    or their own aliases (each resolves to its base's spec: one worker serves the base and them)."""

    def __init__(self, specs: list[BaseSpec], source: Path | None = None):
        self.source = source
        self._specs = {spec.id: spec for spec in specs}
        self._names: dict[str, tuple[BaseSpec, str | None]] = {}
        for spec in specs:
            named = [(name, None) for name in spec.names]
            named += [(name, a.name) for a in spec.adapters for name in spec.adapter_names(a)]
            for name, adapter in named:
                if name in self._names:
                    where = f"{source}: " if source else ""
                    raise RegistryError(f"{where}model {spec.id!r}: name {name!r} is already used")
                self._names[name] = (spec, adapter)

    def resolve(self, name: str) -> BaseSpec | None:
        """The spec for a client-facing name (an adapter's: its base's), or None."""
        found = self._names.get(name)
        return found[0] if found else None

    def adapter(self, name: str) -> str | None:
        """The adapter a client-facing name asks for (its models.yaml name), or None for a model itself."""
        found = self._names.get(name)
        return found[1] if found else None

    def require(self, name: str, capability: Capability | frozenset[Capability]) -> BaseSpec:
        """The spec a request names, able to do what the request asks of it (one of a set, for a set)."""
        found = self._names.get(name)
        if found is None:
            raise ModelNotFound(f"The model '{name[:100]}' does not exist or you do not have access to it."
                                + self._adapter_hint(name), param="model")
        spec, adapter = found
        wanted = capability if isinstance(capability, frozenset) else frozenset({capability})
        able = spec.capabilities & ADAPTER_CAPABILITIES if adapter else spec.capabilities
        if not wanted & able:
            what = " or ".join(sorted(c.value for c in wanted))
            subject = f"adapter {name} of model {spec.id}" if adapter else f"model {spec.id}"
            raise UnsupportedCapability(f"{subject} does not support {what}", param="model")
        return spec

    def _adapter_hint(self, name: str) -> str:
        """For `<model>:<unknown>`, the adapters the model does have."""
        base, colon, _ = name.rpartition(":")
        spec = self._specs.get(base) if colon else None
        if spec is None:
            return ""
        have = ", ".join(a.name for a in spec.adapters) or "none"
        return f" Model {spec.id} has these adapters: {have}."[:300]

    def get(self, model_id: str) -> BaseSpec:
        return self._specs[model_id]

    def __iter__(self):
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)


def parse_registry(data: Any, source: Path, allowed_dirs: list[Path] | None = None) -> Registry:
    where = str(source)
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise RegistryError(f"{where}: expected a mapping with a 'models' list")
    specs = []
    for index, raw in enumerate(data["models"]):
        label = raw.get("id", f"#{index}") if isinstance(raw, dict) else f"#{index}"
        if isinstance(raw, dict):
            raw = _resolve_paths(raw, source.parent)
        try:
            spec = parse_spec(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"][1:] if p) or "backend"
            raise RegistryError(f"{where}: model {label!r}: field {field!r}: {first['msg']}") from None
        for path in spec.files():
            _check_inside(path, allowed_dirs, where, spec.id)
        specs.append(spec)
    return Registry(specs, source)


def load_registry(path: Path, allowed_dirs: list[Path] | None = None) -> Registry:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read the model registry: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
    return parse_registry(data, path, allowed_dirs)


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """The entry with its file paths (the model's, its adapters', a GGUF's projector) made absolute
    against models.yaml's directory."""
    raw = dict(raw)
    if "path" in raw:
        raw["path"] = str(_resolve_path(raw["path"], base))
    if isinstance(raw.get("adapters"), list):
        raw["adapters"] = [{**a, "path": str(_resolve_path(a["path"], base))}
                           if isinstance(a, dict) and "path" in a else a for a in raw["adapters"]]
    options = raw.get("options")
    if isinstance(options, dict) and isinstance(options.get("mmproj"), str):
        raw["options"] = {**options, "mmproj": str(_resolve_path(options["mmproj"], base))}
    return raw


def _resolve_path(value: Any, base: Path) -> Path:
    path = Path(str(value)).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _check_inside(path: Path, allowed: list[Path] | None, where: str, model_id: str) -> None:
    if not allowed:
        return
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in allowed):
        raise RegistryError(
            f"{where}: model {model_id!r}: file {resolved} is outside the allowed model "
            f"directories ({', '.join(str(d) for d in allowed)})"
        )
