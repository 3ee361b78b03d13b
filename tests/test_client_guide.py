"""docs/clients.md is true: its Python snippets run against a live server with the demo models, with
the real client packages, and its configuration files parse and point at modelyard."""

from __future__ import annotations

import contextlib
import io
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import serve

import tinymodels

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "clients.md"
DEMO = ("demo-chat", "demo-gguf", "demo-embed-gguf", "demo-rerank")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    root = tinymodels.build_all()
    registry = yaml.safe_load((GUIDE.parent.parent / "models.yaml").read_text())
    models = [{**m, "path": str(root / Path(m["path"]).name)} if "path" in m else m
              for m in registry["models"] if m["id"] in DEMO]
    with serve(tmp_path_factory.mktemp("guide"), models) as served:
        yield served.base_url


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_each_python_snippet_runs(base_url, index):
    code = blocks("python")[index].replace("http://localhost:8000", base_url)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, f"docs/clients.md snippet {index}", "exec"), {})
    assert printed.getvalue().strip()


def test_the_codex_config_points_at_the_responses_api():
    [config] = [tomllib.loads(block) for block in blocks("toml")]
    provider = config["model_providers"][config["model_provider"]]
    assert provider["base_url"] == "http://localhost:8000/v1" and provider["wire_api"] == "responses"


def test_the_continue_config_gives_every_role_a_model():
    continue_config = next(yaml.safe_load(b) for b in blocks("yaml") if "schema: v1" in b)
    roles = {role for model in continue_config["models"] for role in model["roles"]}
    assert {"chat", "autocomplete", "embed", "rerank"} <= roles
    assert all(m["apiBase"].startswith("http://localhost:8000/v1") for m in continue_config["models"])


def test_the_zed_settings_parse():
    [settings] = [json.loads(block) for block in blocks("json")]
    provider = settings["language_models"]["openai_compatible"]["modelyard"]
    assert provider["api_url"] == "http://localhost:8000/v1" and provider["available_models"][0]["name"]
