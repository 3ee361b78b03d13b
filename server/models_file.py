"""Adding entries to models.yaml without losing what the user wrote there.

ruamel.yaml's round-trip mode keeps comments, key order and flow style; the new entry goes at the
end of `models:`. The whole registry, with the entry added, is checked the way the server checks it
(every spec, every name, every path inside the allowed directories) before the file is replaced,
atomically: a command that adds a model never leaves a registry the server would refuse.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from server.registry import Registry, RegistryError, parse_registry

_HEADER = "# The model registry: each entry is a model clients can ask for by `id` (or an alias).\n"


def _yaml() -> YAML:
    yaml = YAML()  # round-trip
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # never fold a long model path
    return yaml


class ModelsFile:
    """One models.yaml, read for editing."""

    def __init__(self, path: Path):
        self.path = path
        self._yaml = _yaml()
        if path.exists():
            try:
                self._doc = self._yaml.load(path.read_text()) or CommentedMap()
            except Exception as exc:  # ruamel raises its own error types for broken YAML
                raise RegistryError(f"{path}: not valid YAML: {exc}") from None
        else:
            self._doc = self._yaml.load(_HEADER + "models: []\n")
        if not isinstance(self._doc, dict) or not isinstance(self._doc.get("models", []), list):
            raise RegistryError(f"{path}: expected a mapping with a 'models' list")
        if self._doc.get("models") is None:
            self._doc["models"] = CommentedSeq()

    @property
    def entries(self) -> list[Any]:
        return list(self._doc["models"])

    def names(self) -> set[str]:
        """Every id and alias in use."""
        used: set[str] = set()
        for entry in self.entries:
            if isinstance(entry, dict):
                used.add(str(entry.get("id")))
                used.update(str(a) for a in entry.get("aliases") or [])
        return used

    def paths(self) -> set[Path]:
        """The model paths already declared, resolved as the registry resolves them."""
        found = set()
        for entry in self.entries:
            if isinstance(entry, dict) and entry.get("path"):
                value = Path(str(entry["path"])).expanduser()
                found.add((value if value.is_absolute() else self.path.parent / value).resolve())
        return found

    def unique_id(self, wanted: str) -> str:
        """`wanted`, or `wanted-2`, `wanted-3`... if it is taken."""
        used = self.names()
        candidate, n = wanted, 2
        while candidate in used:
            candidate, n = f"{wanted}-{n}", n + 1
        return candidate

    def add(self, entry: dict[str, Any], allowed_dirs: list[Path] | None, comment: str | None = None) -> Registry:
        """Append `entry`, check the whole registry as the server would, and write the file.
        Returns the registry as the server will read it; RegistryError (file untouched) if it is invalid."""
        item = CommentedMap()
        for key, value in entry.items():
            if isinstance(value, dict):
                value = _flow(value)
            item[key] = value
        models = self._doc["models"]
        if not isinstance(models, CommentedSeq):
            models = self._doc["models"] = CommentedSeq(models)
        models.append(item)
        if comment:
            models.yaml_set_comment_before_after_key(len(models) - 1, before=comment, indent=2)
        text = self.dump()
        try:
            registry = parse_registry(YAML(typ="safe").load(text), self.path, allowed_dirs)
        except RegistryError:
            models.pop()
            raise
        self._write(text)
        return registry

    def dump(self) -> str:
        out = io.StringIO()
        self._yaml.dump(self._doc, out)
        return out.getvalue()

    def _write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            if self.path.exists():
                os.chmod(tmp, self.path.stat().st_mode & 0o777)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _flow(value: dict[str, Any]) -> CommentedMap:
    """Options as a one-line mapping, the way the shipped models.yaml writes them."""
    mapping = CommentedMap(value)
    mapping.fa.set_flow_style()
    return mapping
