"""models.yaml -> typed specs; a bad file stops the server with a message naming file, model and field."""

import pytest

from backends.spec import FOREVER, parse_keep_alive
from backends.text import StopMatcher
from server.registry import RegistryError, load_registry


def write(tmp_path, text):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_keep_alive_accepts_seconds_and_durations():
    assert parse_keep_alive(30) == 30
    assert parse_keep_alive("5m") == 300
    assert parse_keep_alive("1h") == 3600
    assert parse_keep_alive("250ms") == 0.25
    assert parse_keep_alive("0") == 0
    assert parse_keep_alive(-1) == FOREVER
    with pytest.raises(ValueError):
        parse_keep_alive("soon")
    with pytest.raises(ValueError):
        parse_keep_alive(float("nan"))


def test_registry_resolves_ids_and_aliases(tmp_path):
    registry = load_registry(write(tmp_path, """
models:
  - {id: org/model-a, backend: fake, aliases: [gpt-4o-mini], keep_alive: 2m, pinned: true}
"""))
    spec = registry.resolve("gpt-4o-mini")
    assert spec.id == "org/model-a" and spec.keep_alive == 120 and spec.pinned
    assert registry.resolve("org/model-a") is spec and registry.resolve("nope") is None


def test_invalid_field_names_file_model_and_field(tmp_path):
    path = write(tmp_path, """
models:
  - {id: good, backend: fake}
  - {id: bad, backend: fake, options: {memory_mb: -5}}
""")
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    message = str(caught.value)
    assert str(path) in message and "'bad'" in message and "memory_mb" in message


def test_unknown_backend_is_named(tmp_path):
    with pytest.raises(RegistryError) as caught:
        load_registry(write(tmp_path, "models:\n  - {id: x, backend: warp-drive}\n"))
    assert "'x'" in str(caught.value) and "backend" in str(caught.value)


def test_unknown_field_is_refused(tmp_path):
    with pytest.raises(RegistryError) as caught:
        load_registry(write(tmp_path, "models:\n  - {id: x, backend: fake, keep_alive_typo: 5}\n"))
    assert "keep_alive_typo" in str(caught.value)


def test_duplicate_names_are_refused(tmp_path):
    with pytest.raises(RegistryError) as caught:
        load_registry(write(tmp_path, "models:\n  - {id: x, backend: fake}\n  - {id: y, backend: fake, aliases: [x]}\n"))
    assert "already used" in str(caught.value)


def test_missing_and_malformed_files_are_clear(tmp_path):
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(tmp_path / "absent.yaml")
    with pytest.raises(RegistryError, match="not valid YAML"):
        load_registry(write(tmp_path, "models: [unclosed"))
    with pytest.raises(RegistryError, match="'models' list"):
        load_registry(write(tmp_path, "just: text"))


def test_stop_matcher_holds_back_partial_stop_strings():
    matcher = StopMatcher(["</end>"])
    assert matcher.feed("hello </e") == ("hello ", False)
    assert matcher.feed("nd> more") == ("", True)
    plain = StopMatcher(["zz"])
    assert plain.feed("abc z") == ("abc ", False)
    assert plain.feed("y") == ("zy", False)
    assert plain.flush() == ""
