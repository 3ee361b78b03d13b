"""Images through the real app, a real diffusers worker and the openai client, on a tiny random SD pipeline."""

from __future__ import annotations

import base64
import io
import time

import httpx
import openai
import pytest
from conftest import serve
from PIL import Image

from tinymodels import DEFAULT_ROOT, media


@pytest.fixture(scope="module")
def demo_root():
    media.build(DEFAULT_ROOT)
    return DEFAULT_ROOT


def sd_spec(root, model_id="sd", **options) -> dict:
    base = {"default_steps": 2, "max_steps": 400, "default_size": "32x32", "min_side": 16, "max_side": 256,
            "max_pixels": 256 * 256, "max_n": 4, "device": "cpu"}
    return {"id": model_id, "backend": "diffusers", "path": str(root / "tiny-sd"), "options": {**base, **options}}


@pytest.fixture(scope="module")
def s(demo_root, tmp_path_factory):
    # "cold" is never used successfully: requests refused before any model is touched name it.
    models = [sd_spec(demo_root), sd_spec(demo_root, "cold"), {"id": "chat", "backend": "fake"},
              sd_spec(demo_root, "euler", scheduler="EulerDiscreteScheduler"),
              sd_spec(demo_root, "guarded", safety_checker=True),
              {**sd_spec(demo_root, "single", pipeline="sd", config=str(demo_root / "tiny-sd")),
               "path": str(demo_root / "tiny-sd.safetensors")},
              {**sd_spec(demo_root, "xl"), "path": str(demo_root / "tiny-sdxl")}]
    # Auth on (the fixture's clients send "Bearer test"): image URLs must still work without the key.
    with serve(tmp_path_factory.mktemp("images"), models, image_ttl_s=2.0, api_keys=["test"]) as served:
        yield served


def png_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_b64_json_decodes_to_a_png_of_the_requested_size(s):
    result = s.client().images.generate(model="sd", prompt="a red fox", size="48x32", response_format="b64_json")
    assert result.created > 0
    assert len(result.data) == 1
    assert png_of(base64.b64decode(result.data[0].b64_json)).size == (48, 32)


def test_n_images_come_back_and_a_seed_makes_them_reproducible(s):
    client = s.client()
    first = client.images.generate(model="sd", prompt="fox", n=3, response_format="b64_json", extra_body={"seed": 7})
    again = client.images.generate(model="sd", prompt="fox", n=3, response_format="b64_json", extra_body={"seed": 7})
    assert len(first.data) == 3
    assert [d.b64_json for d in first.data] == [d.b64_json for d in again.data]
    assert len({d.b64_json for d in first.data}) == 3  # image i uses seed + i


def test_url_is_absolute_fetchable_without_the_key_and_expires(s):
    result = s.client().images.generate(model="sd", prompt="fox", size="32x32", response_format="url")
    url = result.data[0].url
    assert url.startswith(s.base_url + "/v1/images/files/")
    fetched = httpx.get(url)  # no Authorization header: the unguessable URL is the credential
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert png_of(fetched.content).size == (32, 32)
    assert httpx.get(url[:-8] + "AAAAAAA.png").status_code == 404
    unauthenticated = httpx.post(s.base_url + "/v1/images/generations", json={"model": "sd", "prompt": "fox"})
    assert unauthenticated.status_code == 401  # generating still needs the key
    time.sleep(2.2)  # the test server's image_ttl_s is 2 s
    assert httpx.get(url).status_code == 404


def test_extensions_steps_guidance_and_negative_prompt_are_honoured(s):
    before = s.resident("sd", stats=True)["worker"]["steps_run"]
    s.client().images.generate(model="sd", prompt="fox", response_format="b64_json",
                               extra_body={"steps": 5, "guidance_scale": 3.0, "negative_prompt": "blur"})
    assert s.resident("sd", stats=True)["worker"]["steps_run"] - before == 5


@pytest.mark.parametrize(("fields", "param"), [
    ({"size": "33x32"}, "size"),
    ({"size": "8x8"}, "size"),
    ({"size": "4096x4096"}, "size"),
    ({"size": "big"}, "size"),
    ({"size": "-32x32"}, "size"),
    ({"n": 0}, "n"),
    ({"n": 5}, "n"),
    ({"n": 1000}, "n"),
    ({"steps": 0}, "steps"),
    ({"steps": 401}, "steps"),
    ({"steps": 10**9}, "steps"),
    ({"guidance_scale": float("nan")}, "guidance_scale"),
    ({"guidance_scale": -1}, "guidance_scale"),
    ({"seed": 2**64}, "seed"),
    ({"prompt": ""}, "prompt"),
])
def test_bad_size_steps_n_and_numbers_are_a_400_before_any_model_is_touched(s, fields, param):
    loads = s.arbiter.loads
    body = {"model": "cold", "prompt": "fox", **fields}
    response = s.http.post("/v1/images/generations", content=_json(body), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert s.arbiter.loads == loads
    assert s.resident("cold") is None


def _json(body: dict) -> bytes:
    import json

    return json.dumps(body, allow_nan=True).encode()


def test_openai_client_sees_a_bad_request_error_with_param(s):
    with pytest.raises(openai.BadRequestError) as caught:
        s.client().images.generate(model="sd", prompt="fox", size="1000x1000")
    assert caught.value.body["param"] == "size"


def test_a_text_model_name_is_refused_for_images(s):
    with pytest.raises(openai.BadRequestError) as caught:
        s.client().images.generate(model="chat", prompt="fox")
    assert caught.value.body["param"] == "model"


def test_a_disconnect_during_diffusion_stops_the_steps(s):
    s.client().images.generate(model="sd", prompt="fox", response_format="b64_json")  # loaded, so the steps start
    before = s.resident("sd", stats=True)["worker"]
    with pytest.raises(httpx.ReadTimeout):
        s.http.post("/v1/images/generations", timeout=1.0,
                    json={"model": "sd", "prompt": "fox", "size": "256x256", "steps": 400,
                          "response_format": "b64_json"})
    after = s.wait_until(lambda: _settled(s, before), timeout=30)
    assert after["cancelled"] == before["cancelled"] + 1
    ran = after["steps_run"] - before["steps_run"]
    assert 0 < ran < 400, ran
    assert after["images_generated"] == before["images_generated"]


def _settled(s, before):
    worker = s.resident("sd", stats=True)["worker"]
    return worker if worker["active"] == 0 and worker["cancelled"] > before["cancelled"] else None


def test_image_metrics_are_counted(s):
    text = s.http.get("/metrics").text
    assert 'modelyard_images_generated_total{model="sd"}' in text


def test_a_configured_scheduler_is_used(s):
    result = s.client().images.generate(model="euler", prompt="fox", response_format="b64_json",
                                        extra_body={"steps": 3})
    assert png_of(base64.b64decode(result.data[0].b64_json)).size == (32, 32)
    assert s.resident("euler", stats=True)["worker"]["steps_run"] == 3


def test_safety_checker_on_without_one_in_the_pipeline_fails_the_load_clearly(s):
    response = s.http.post("/v1/images/generations", json={"model": "guarded", "prompt": "fox"})
    assert response.status_code == 500
    assert response.headers["x-should-retry"] == "false"
    assert "safety checker" in response.json()["error"]["message"]
    assert s.resident("guarded") is None


def test_a_single_file_checkpoint_gives_the_same_images_as_its_diffusers_directory(s):
    # tiny-sd.safetensors holds tiny-sd's weights in the original (LDM) layout.
    def image(model):
        return s.client().images.generate(model=model, prompt="fox", response_format="b64_json",
                                          extra_body={"seed": 3}).data[0].b64_json

    assert image("single") == image("sd")


def test_an_sdxl_pipeline_is_found_from_its_model_index_and_serves(s):
    result = s.client().images.generate(model="xl", prompt="fox", size="48x32", response_format="b64_json")
    assert png_of(base64.b64decode(result.data[0].b64_json)).size == (48, 32)
    assert s.resident("xl", stats=True)["worker"]["images_generated"] == 1
