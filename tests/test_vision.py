"""Images in chat, end to end: data URLs through the real app, real workers and the real clients
(openai's chat and responses, anthropic's messages) to a GGUF LLaVA (model + mmproj through llama.cpp's
mtmd) and Hugging Face LLaVA, LLaVA-NeXT, BLIP-2 and InstructBLIP (fp16 and bitsandbytes) models; the
refusals of bad images, of fetching, and of images sent to a text model."""

from __future__ import annotations

import base64
import concurrent.futures
import io

import anthropic
import openai
import pytest
from conftest import serve
from PIL import Image

from tinymodels import DEFAULT_ROOT
from tinymodels import gguf as tiny_gguf
from tinymodels import vision as tiny_vision

IMAGE_TOKENS = 16  # the tiny towers read 32x32 pixels in 8x8 patches


def png(width: int = 40, height: int = 30, colour=(200, 10, 10), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format=fmt)
    return out.getvalue()


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(data).decode()


def ask(*images: str, text: str = "What is in the picture?", detail: str = "auto") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url, "detail": detail}} for url in images]
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts]}]


def gguf_llava(model_id: str = "llava-gguf", **options) -> dict:
    return {"id": model_id, "backend": "gguf", "path": str(DEFAULT_ROOT / tiny_gguf.CHAT_FILE),
            "options": {"n_ctx": 1024, "mmproj": str(DEFAULT_ROOT / tiny_vision.MMPROJ_FILE), **options}}


def hf(model_id: str, directory: str, **options) -> dict:
    return {"id": model_id, "backend": "hf", "path": str(DEFAULT_ROOT / directory), "options": options}


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    tiny_vision.build(DEFAULT_ROOT)
    models = [gguf_llava(max_images=2), gguf_llava("llava-gguf-small", max_images=1),
              {"id": "text-gguf", "backend": "gguf", "path": str(DEFAULT_ROOT / tiny_gguf.CHAT_FILE),
               "options": {"n_ctx": 1024}},
              hf("llava-hf", tiny_vision.LLAVA_DIR), hf("llava-next-hf", tiny_vision.LLAVA_NEXT_DIR),
              hf("blip2", tiny_vision.BLIP2_DIR), hf("blip2-8bit", tiny_vision.BLIP2_DIR, quantization="8bit"),
              hf("llava-hf-4bit", tiny_vision.LLAVA_DIR, quantization="4bit"),
              hf("instructblip", tiny_vision.INSTRUCTBLIP_DIR)]
    with serve(tmp_path_factory.mktemp("vision"), models, budget_mb=16384) as served:
        yield served


def chat(s, model: str, messages: list[dict], **kwargs):
    return s.client().chat.completions.create(model=model, messages=messages, max_tokens=kwargs.pop("max_tokens", 6),
                                              temperature=0, **kwargs)


def test_a_gguf_llava_reads_images_sent_as_data_urls(s):
    plain = chat(s, "llava-gguf", [{"role": "user", "content": "What is in the picture?"}])
    one = chat(s, "llava-gguf", ask(data_url(png())))
    two = chat(s, "llava-gguf", ask(data_url(png()), data_url(png(fmt="JPEG"), "image/jpeg")))
    assert one.choices[0].finish_reason in ("stop", "length")
    # Each image takes its tokens in the prompt (and its cells in the KV cache), the marker's line aside.
    assert one.usage.prompt_tokens - plain.usage.prompt_tokens >= IMAGE_TOKENS
    assert two.usage.prompt_tokens - one.usage.prompt_tokens >= IMAGE_TOKENS
    assert s.resident("llava-gguf", stats=True)["worker"]["images"] == 3


def test_an_image_changes_what_the_model_reads(s):
    red, blue = (chat(s, "llava-gguf", ask(data_url(png(colour=c))), max_tokens=1, logprobs=True, top_logprobs=5)
                 for c in ((250, 0, 0), (0, 0, 250)))
    assert red.choices[0].logprobs.content[0].top_logprobs != blue.choices[0].logprobs.content[0].top_logprobs


def test_image_and_text_requests_decode_together(s):
    client = s.client()

    def one(i: int):
        messages = ask(data_url(png(colour=(i * 40, 0, 0)))) if i % 2 else [{"role": "user", "content": f"hi {i}"}]
        return client.chat.completions.create(model="llava-gguf", messages=messages, max_tokens=160, temperature=0,
                                              logit_bias={"2": -100, "4": -100})  # </s> and <|im_end|> banned
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(4)))
    assert all(a.usage.completion_tokens == 160 for a in answers)
    assert s.resident("llava-gguf", stats=True)["worker"]["peak_sequences"] >= 2


def test_streaming_and_the_other_front_doors_take_images(s):
    url = data_url(png())
    stream = s.client().chat.completions.create(model="llava-gguf", messages=ask(url), max_tokens=4, temperature=0,
                                                stream=True)
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] in ("stop", "length")
    response = s.client().responses.create(model="llava-gguf", max_output_tokens=4, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Describe it."}, {"type": "input_image", "image_url": url}]}])
    assert response.status in ("completed", "incomplete") and response.usage.input_tokens > IMAGE_TOKENS
    claude = anthropic.Anthropic(base_url=s.base_url, api_key="test", max_retries=0)
    message = claude.messages.create(model="llava-gguf", max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(png()).decode()}},
        {"type": "text", "text": "Describe it."}]}])
    assert message.usage.input_tokens > IMAGE_TOKENS


def test_models_list_the_vision_capability(s):
    listed = {m["id"]: m for m in s.http.get("/v1/models").json()["data"]}
    for model in ("llava-gguf", "llava-hf", "llava-next-hf", "blip2", "instructblip"):
        assert "vision" in listed[model]["capabilities"], model
    assert "vision" not in listed["text-gguf"]["capabilities"]


def test_the_estimate_counts_the_projector_and_its_encoder(s):
    def estimate(model: str) -> dict:
        return s.http.get("/admin/plan", params={"model": model}).json()["ladder"][0]["estimate"]

    with_projector, text_only = estimate("llava-gguf"), estimate("text-gguf")
    projector_mb = (DEFAULT_ROOT / tiny_vision.MMPROJ_FILE).stat().st_size / 2**20
    assert abs(with_projector["weights_mb"] - text_only["weights_mb"] - projector_mb) < 0.1
    assert with_projector["activations_mb"] >= text_only["activations_mb"]


# ---- refusals --------------------------------------------------------------------------------------


def refused(s, model: str, messages: list[dict]) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(s, model, messages)
    return caught.value


def test_a_text_model_refuses_an_image_clearly(s):
    error = refused(s, "text-gguf", ask(data_url(png())))
    assert error.code == "unsupported_model_capability" and "reads text only" in error.message
    assert error.param == "messages.0.content.1"


def test_a_non_image_posing_as_png_is_refused(s):
    error = refused(s, "llava-gguf", ask(data_url(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 10)))
    assert error.code == "invalid_image" and "not a PNG, JPEG" in error.message
    assert error.param == "messages.0.content.1"


def test_more_images_than_the_model_takes_are_refused(s):
    error = refused(s, "llava-gguf-small", ask(data_url(png()), data_url(png())))
    assert error.code == "invalid_image" and "at most 1 images" in error.message


def test_a_remote_url_is_refused_when_fetching_is_off(s):
    error = refused(s, "llava-gguf", ask("https://images.example.com/cat.png"))
    assert "not enabled" in error.message and error.code == "invalid_image"


def test_an_image_over_the_pixel_cap_is_refused(served):
    with served([gguf_llava()], image_max_pixels=10_000) as small:
        error = refused(small, "llava-gguf", ask(data_url(png(200, 100))))
        assert "200x100 pixels" in error.message and error.code == "invalid_image"
        assert small.ps()["residents"] == []  # refused before any model was loaded


def test_an_allowed_host_resolving_to_a_private_address_is_refused(served):
    with served([gguf_llava()], image_fetch_hosts=["localhost"]) as fetching:
        error = refused(fetching, "llava-gguf", ask(f"{fetching.base_url.replace('127.0.0.1', 'localhost')}/x.png"))
        assert "private address" in error.message


# ---- Hugging Face vision models --------------------------------------------------------------------


@pytest.mark.parametrize("model", ["llava-hf", "llava-next-hf", "blip2", "instructblip", "llava-hf-4bit", "blip2-8bit"])
def test_hugging_face_vision_models_read_images_through_their_processors(s, model):
    plain = chat(s, model, [{"role": "user", "content": "What is in the picture?"}])
    seen = chat(s, model, ask(data_url(png(64, 40))))
    assert seen.choices[0].finish_reason in ("stop", "length") and plain.choices[0].finish_reason in ("stop", "length")
    # The processor expands the image into its tokens: 16 for LLaVA; LLaVA-NeXT's tiles more; BLIP's 4 queries.
    least = 4 if "blip" in model else IMAGE_TOKENS
    assert seen.usage.prompt_tokens - plain.usage.prompt_tokens >= least
    worker = s.resident(model, stats=True)["worker"]
    assert worker["images"] == 1
    if model.endswith(("4bit", "8bit")):
        assert worker["quantization"] == model[-4:]


def test_llava_next_tiles_a_large_image_into_more_tokens_than_a_small_one(s):
    small = chat(s, "llava-next-hf", ask(data_url(png(32, 32))))
    wide = chat(s, "llava-next-hf", ask(data_url(png(128, 64))))
    assert wide.usage.prompt_tokens > small.usage.prompt_tokens


def test_blip_models_take_one_image(s):
    error = refused(s, "blip2", ask(data_url(png()), data_url(png())))
    assert "at most 1 images" in error.message


def test_a_hugging_face_image_changes_the_answer_and_streams(s):
    red, blue = (chat(s, "llava-hf", ask(data_url(png(colour=c))), max_tokens=1, logprobs=True, top_logprobs=5)
                 for c in ((250, 0, 0), (0, 0, 250)))
    assert red.choices[0].logprobs.content[0].top_logprobs != blue.choices[0].logprobs.content[0].top_logprobs
    stream = s.client().chat.completions.create(model="blip2", messages=ask(data_url(png())), max_tokens=4,
                                                temperature=0, stream=True)
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] in ("stop", "length")


def test_a_parked_vision_model_comes_back_from_ram_with_its_processor(served):
    from test_scheduler_e2e import parked, swaps_from

    with served([{**hf("llava-hf", tiny_vision.LLAVA_DIR), "keep_alive": 0}], ram_budget_mb=2000) as parking:
        before = chat(parking, "llava-hf", ask(data_url(png()))).choices[0].message.content
        parking.wait_until(lambda: "llava-hf" in parked(parking), timeout=30)
        after = chat(parking, "llava-hf", ask(data_url(png()))).choices[0].message.content
        assert after == before and swaps_from(parking, "llava-hf", "ram") >= 1


def test_detail_low_gives_a_tiling_model_fewer_image_tokens(s):
    photo = data_url(png(128, 128))
    high = chat(s, "llava-next-hf", ask(photo, detail="high"))
    low = chat(s, "llava-next-hf", ask(photo, detail="low"))
    assert low.usage.prompt_tokens < high.usage.prompt_tokens


@pytest.mark.parametrize("model", ["llava-gguf", "llava-hf"])
def test_counting_tokens_counts_the_images_a_chat_would_read(s, model):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(png()).decode()}}
    claude = anthropic.Anthropic(base_url=s.base_url, api_key="test", max_retries=0)
    counted = claude.messages.count_tokens(model=model, messages=[{"role": "user", "content": [
        image, {"type": "text", "text": "Describe it."}]}]).input_tokens
    answered = claude.messages.create(model=model, max_tokens=1, messages=[{"role": "user", "content": [
        image, {"type": "text", "text": "Describe it."}]}]).usage.input_tokens
    assert counted == answered > IMAGE_TOKENS
    with pytest.raises(anthropic.BadRequestError):  # a text model refuses the image, as its chat would
        claude.messages.count_tokens(model="text-gguf", messages=[{"role": "user", "content": [image]}])
