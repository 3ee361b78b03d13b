"""The built-in page in a real browser: Debian's headless Chromium (installed by `make tools`) driven
by Playwright, against the real server with worker processes and tiny real models.

What a person does is what the tests do: open /ui, type, click, upload, record from a (fake)
microphone, and read what the page shows; the server is driven from outside too, to see the page
follow a swap it did not cause, without a reload."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile
from conftest import fake
from PIL import Image, ImageStat
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tinymodels import build_all

HELLO = [{"role": "user", "content": "hello there"}]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 720}


def chromium_binary() -> str:
    found = shutil.which("chromium")
    assert found, "Chromium is not installed: run `make tools` (apt-get install chromium)"
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # The fake microphone plays a beep; its prompt is answered "allow".
        browser = playwright.chromium.launch(
            executable_path=chromium_binary(),
            args=["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def demo():
    return build_all()


@contextlib.contextmanager
def opened(browser: Browser, s, *, key: str | None = None, viewport=DESKTOP, scheme="light",
           permissions=()) -> Iterator[Page]:
    """The page at /ui in a fresh browser context (a new tab, its own session storage). Any script
    error on the page fails the test."""
    context = browser.new_context(viewport=viewport, color_scheme=scheme, permissions=list(permissions))
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    if key:
        page.add_init_script(f"sessionStorage.setItem('modelyard.apiKey', {json.dumps(key)})")
    page.goto(s.base_url + "/")  # the root redirects to the page
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"script errors on the page: {errors}"


def live(page: Page) -> None:
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")


def not_blank(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(1 << 20)
    assert colours is not None and len(colours) > 20, "the screenshot is (nearly) one colour"
    assert ImageStat.Stat(image.convert("L")).stddev[0] > 10, "the screenshot has no contrast"
    return image


def tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


# ---- the memory view --------------------------------------------------------------------------------


def test_the_memory_bar_follows_a_swap_caused_elsewhere_without_a_reload(browser, served, tmp_path):
    with served([fake("a", memory_mb=600), fake("b", memory_mb=600)], budget_mb=1000, ram_budget_mb=2000) as s, \
            opened(browser, s) as page:
        live(page)
        page.evaluate("window.sameDocument = true")
        client = s.client()
        client.chat.completions.create(model="a", messages=HELLO, max_tokens=2)
        a_on_device = page.locator("#device-bar .seg[data-model='a']")
        expect(a_on_device).to_have_attribute("data-state", "ready")
        bar = page.locator("#device-bar").bounding_box()
        share = a_on_device.bounding_box()["width"] / bar["width"]
        assert 0.55 < share < 0.65  # 600 of 1000 MiB
        expect(page.locator("#device-text")).to_contain_text("600 MiB of 1000 MiB")

        client.chat.completions.create(model="b", messages=HELLO, max_tokens=2)  # a must give b its room
        expect(page.locator("#device-bar .seg[data-model='b']")).to_have_attribute("data-state", "ready")
        expect(a_on_device).to_have_count(0)
        expect(page.locator("#ram-bar .seg[data-model='a']")).to_have_attribute("data-state", "parked")
        expect(page.locator("#models tr[data-model='a']")).to_have_attribute("data-state", "parked")
        expect(page.locator("#events")).to_contain_text("a: parked in RAM (capacity)")
        expect(page.locator("#events")).to_contain_text("b: ready, from disk")
        assert page.evaluate("window.sameDocument") is True  # the same page all along: no reload
        not_blank(page.screenshot(path=str(tmp_path / "swap.png")))


def test_a_selected_models_plan_and_its_load_pin_and_unload_buttons(browser, served):
    with served([fake("a", memory_mb=600), fake("b", memory_mb=600, spec_keep_alive="10m")], budget_mb=1000,
                ram_budget_mb=2000) as s, opened(browser, s) as page:
        live(page)
        s.client().chat.completions.create(model="a", messages=HELLO, max_tokens=1)
        page.locator("#models tr[data-model='b'] button").click()
        expect(page.locator("#detail-title")).to_have_text("b")
        plan = page.locator("#plan")
        expect(plan).to_contain_text("Load from disk at full")
        expect(plan).to_contain_text("Evict a")
        expect(plan).to_contain_text("Park a in RAM")
        expect(page.locator("#ladder tr.chosen")).to_contain_text("full (chosen)")

        page.get_by_role("button", name="Load now").click()
        expect(page.locator("#act-status")).to_contain_text("Loaded b at full")
        expect(page.locator("#device-bar .seg[data-model='b']")).to_have_attribute("data-state", "ready")
        expect(page.locator("#ram-bar .seg[data-model='a']")).to_have_count(1)
        expect(page.locator("#loads")).to_contain_text("from disk in")
        expect(plan).to_contain_text("Be served at once")

        page.get_by_role("button", name="Pin", exact=True).click()
        expect(page.get_by_role("button", name="Unpin")).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#models tr[data-model='b'] td.keep")).to_have_text("pinned")
        page.locator("#ram-bar .seg[data-model='a']").hover()  # hovering previews another model's plan
        expect(page.locator("#detail-title")).to_have_text("a")
        expect(plan).to_contain_text("Can never load")
        page.mouse.move(0, 0)
        expect(page.locator("#detail-title")).to_have_text("b")

        page.get_by_role("button", name="Unpin").click()
        expect(page.locator("#models tr[data-model='b'] td.keep")).to_have_text(re.compile(r"^(9|10):\d\d left$"))
        page.get_by_role("button", name="Unload").click()
        expect(page.locator("#device-bar .seg[data-model='b']")).to_have_count(0)
        expect(page.locator("#events")).to_contain_text("b: unloaded (admin)")


def test_the_page_asks_for_the_key_once_and_keeps_it_for_the_tab(browser, served):
    with served([fake("a")], api_keys=["sesame"]) as s, opened(browser, s) as page:
        dialog = page.locator("#key-dialog")
        expect(dialog).to_have_attribute("open", "")
        page.get_by_role("textbox", name="Key").fill("wrong")
        page.get_by_role("button", name="Use this key").click()
        expect(dialog).to_have_attribute("open", "")
        expect(page.locator("#key-reason")).to_contain_text("Incorrect API key")
        page.get_by_role("textbox", name="Key").fill("sesame")
        page.get_by_role("button", name="Use this key").click()
        live(page)
        expect(page.locator("#models tr[data-model='a']")).to_have_count(1)
        assert page.evaluate("sessionStorage.getItem('modelyard.apiKey')") == "sesame"
        page.reload()
        live(page)  # the tab kept it: no second prompt
        expect(dialog).not_to_have_attribute("open", "")
    with served([fake("a")], api_keys=["sesame"]) as s, opened(browser, s) as other_tab:
        expect(other_tab.locator("#key-dialog")).to_have_attribute("open", "")  # another tab asks again


# ---- the playground ------------------------------------------------------------------------------------


def test_a_chat_reply_streams_into_the_page_as_it_is_generated(browser, served):
    with served([fake("chat", token_latency_s=0.05)]) as s, opened(browser, s) as page:
        live(page)
        page.get_by_label("Max tokens").fill("30")
        page.get_by_label("Temperature").fill("0")
        message = page.get_by_label("Message")
        message.fill("hello there")
        message.press("Enter")
        reply = page.locator("#chat-log .msg.assistant")
        expect(reply).to_have_attribute("data-state", "streaming")
        partial = reply.locator(".text").inner_text()
        expect(reply).to_have_attribute("data-state", "done")
        final = reply.locator(".text").inner_text()
        assert 0 < len(partial) < len(final)  # text appeared while the model was still generating
        expected = s.client().chat.completions.create(model="chat", messages=HELLO, max_tokens=30, temperature=0)
        assert final == expected.choices[0].message.content  # the page made the same call a client makes
        status = page.locator("#chat-form .status")
        expect(status).to_contain_text("first token")
        expect(status).to_contain_text("30 tokens")
        expect(status).to_contain_text("placement full")


def test_an_image_generated_in_the_page_is_shown(browser, served, demo):
    sd = {"id": "sd", "backend": "diffusers", "path": str(demo / "tiny-sd"),
          "options": {"default_steps": 2, "default_size": "64x64", "min_side": 16, "max_side": 256}}
    with served([sd]) as s, opened(browser, s) as page:
        live(page)
        tab(page, "Image")
        expect(page.get_by_label("Size")).to_have_value("64x64")  # the model's own default
        page.get_by_label("Steps").fill("2")
        page.get_by_label("Seed").fill("7")
        page.get_by_label("Prompt", exact=True).fill("a red square")
        page.get_by_role("button", name="Generate").click()
        image = page.locator("#image-out img")
        expect(image).to_be_visible(timeout=120_000)
        assert page.evaluate("document.querySelector('#image-out img').naturalWidth") == 64
        expect(image).to_have_attribute("alt", "Generated for: a red square")
        pixels = Image.open(io.BytesIO(image.screenshot())).convert("RGB")
        assert len(pixels.getcolors(1 << 20) or []) > 20  # an image, not an empty box
        expect(page.locator("#image-out figcaption")).to_contain_text("64x64 · seed 7")


def test_transcription_of_an_uploaded_file_and_of_a_microphone_recording(browser, served, demo, tmp_path):
    whisper = {"id": "whisper", "backend": "faster-whisper", "path": str(demo / "tiny-whisper"),
               "options": {"compute_type": "int8", "max_new_tokens": 8}}
    clip = tmp_path / "tone.wav"
    t = np.arange(16000 * 2) / 16000
    soundfile.write(clip, (0.3 * np.sin(2 * math.pi * 440 * t)).astype(np.float32), 16000)
    with served([whisper]) as s, opened(browser, s, permissions=["microphone"]) as page:
        live(page)
        tab(page, "Transcribe")
        page.get_by_label("Audio file").set_input_files(str(clip))
        page.get_by_role("button", name="Transcribe").click()
        status = page.locator("#transcribe-form .status")
        expect(status).to_contain_text("2.0 s of", timeout=60_000)
        expect(page.locator("#transcript")).to_be_visible()

        record = page.locator("#transcribe-form button[name=record]")
        expect(record).to_have_accessible_name("Record from the microphone")
        record.click()
        expect(record).to_have_attribute("aria-pressed", "true")
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="Stop recording").click()
        expect(status).to_contain_text("Recorded")
        page.get_by_role("button", name="Transcribe").click()
        expect(status).to_contain_text("s of", timeout=60_000)
        seconds = float(status.inner_text().split(" s of")[0])
        assert 1.0 <= seconds < 4.0  # the browser's own webm/opus recording, decoded by the server
        expect(page.locator("#transcribe-form .curl pre")).to_contain_text("-F 'file=@recording.webm'")


def test_speech_is_played_and_two_texts_are_compared_by_their_embeddings(browser, served, demo):
    models = [{"id": "tts", "backend": "vits", "path": str(demo / "tiny-vits")},
              {"id": "embed", "backend": "gguf", "path": str(demo / "tiny-embed.gguf"), "options": {"embedding": True}}]
    with served(models) as s, opened(browser, s) as page:
        live(page)
        tab(page, "Speech")
        expect(page.get_by_label("Voice").locator("option")).to_contain_text(["alloy"])
        page.get_by_role("button", name="Speak").click()
        expect(page.locator("#speech-form .status")).to_contain_text("KiB of wav", timeout=60_000)
        duration = page.evaluate("""() => new Promise((resolve) => {
            const audio = document.querySelector('#speech-out');
            if (audio.readyState >= 1) resolve(audio.duration);
            else audio.addEventListener('loadedmetadata', () => resolve(audio.duration));
        })""")
        assert duration > 0.1

        tab(page, "Embeddings")
        page.get_by_label("First text").fill("the same words")
        page.get_by_label("Second text").fill("the same words")
        page.get_by_role("button", name="Compare").click()
        expect(page.locator("#similarity-value")).to_have_text("1.0000", timeout=60_000)
        page.get_by_label("Second text").fill("entirely different, longer text about ships")
        page.get_by_role("button", name="Compare").click()
        expect(page.locator("#similarity-value")).not_to_have_text("1.0000")
        value = float(page.locator("#similarity-value").inner_text())
        assert -1.0 <= value < 1.0


def test_copy_as_curl_gives_a_command_that_makes_the_same_call(browser, served, demo):
    models = [fake("chat"), {"id": "embed", "backend": "gguf", "path": str(demo / "tiny-embed.gguf"),
                             "options": {"embedding": True}}]
    with served(models, api_keys=["sesame"]) as s, \
            opened(browser, s, key="sesame", permissions=["clipboard-read", "clipboard-write"]) as page:
        live(page)
        tab(page, "Embeddings")
        page.get_by_role("button", name="Compare").click()
        expect(page.locator("#similarity")).to_be_visible(timeout=60_000)
        page.locator("#embed-form .curl-button").click()
        expect(page.locator("#embed-form .curl-button")).to_have_text("Copied")
        command = page.evaluate("navigator.clipboard.readText()")
        assert "$MODELYARD_API_KEY" in command and "sesame" not in command  # the key stays out of the clipboard
        env = {**os.environ, "MODELYARD_API_KEY": "sesame"}
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, env=env)
        vectors = [d["embedding"] for d in json.loads(result.stdout)["data"]]
        a, b = (np.array(v) for v in vectors)
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert page.locator("#similarity-value").inner_text() == f"{cosine:.4f}"

        tab(page, "Chat")
        page.get_by_label("Message").fill("hello there")
        page.locator("#chat-form .curl-button").click()
        command = page.evaluate("navigator.clipboard.readText()")
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, env=env)
        events = [line[6:] for line in result.stdout.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[0])["object"] == "chat.completion.chunk"


def test_text_from_the_server_is_shown_as_text_never_run_as_markup(browser, served):
    trap = "<img src=x onerror=\"window.pwned=1\"><b>bold</b>"
    with served([fake("a", spec_description=trap)]) as s, opened(browser, s) as page:
        live(page)
        page.locator("#models tr[data-model='a'] button").click()
        expect(page.locator("#detail-desc")).to_have_text(f"fake · {trap}")
        assert page.locator("#detail-desc img, #detail-desc b").count() == 0
        assert page.evaluate("window.pwned") is None


# ---- plain, accessible, and laid out for any screen ------------------------------------------------------


def contrast(page: Page, selector: str, behind: str = ".card") -> float:
    """WCAG contrast of an element's text against the background of `behind` (a card by default)."""
    return page.evaluate("""([selector, behind]) => {
        const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
        const lum = ([r, g, b]) => [r, g, b].map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92
            : ((v + 0.055) / 1.055) ** 2.4; }).reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
        const fg = lum(rgb(getComputedStyle(document.querySelector(selector)).color));
        const bg = lum(rgb(getComputedStyle(document.querySelector(behind)).backgroundColor));
        return (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    }""", [selector, behind])


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_page_fits_a_desktop_and_a_phone_and_reads_well_in_both_schemes(browser, served, scheme, tmp_path):
    models = [fake("demo-chat", memory_mb=450), fake("demo-fast", memory_mb=300), fake("b", memory_mb=200)]
    with served(models, budget_mb=1000, ram_budget_mb=1000) as s:
        client = s.client()
        for model in ("demo-chat", "demo-fast"):
            client.chat.completions.create(model=model, messages=HELLO, max_tokens=1)
        for viewport in (DESKTOP, PHONE):
            with opened(browser, s, viewport=viewport, scheme=scheme) as page:
                live(page)
                expect(page.locator("#device-bar .seg[data-model]")).to_have_count(2)
                page.locator("#models tr[data-model='b'] button").click()
                expect(page.locator("#plan li").first).not_to_have_text("Asking the arbiter…")
                overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, f"the page is {overflow}px wider than a {viewport['width']}px screen"
                for selector in ("body", "#models tbody th button", ".muted", "#summary", "[role=tab]",
                                 "#events li[data-kind=swapped_in] span"):
                    assert contrast(page, selector) >= 4.5, (selector, scheme)
                badge = "#models tr[data-model='demo-chat'] .badge"
                assert contrast(page, badge, behind=badge) >= 4.5, scheme  # white on the state's colour
                not_blank(page.screenshot(path=str(tmp_path / f"{viewport['width']}-{scheme}.png"), full_page=True))


def test_the_page_is_usable_from_the_keyboard_and_every_control_is_named(browser, served):
    with served([fake("chat")]) as s, opened(browser, s) as page:
        live(page)
        page.keyboard.press("Tab")
        expect(page.locator(".skip")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#playground")).to_be_focused()
        page.get_by_role("tab", name="Chat").focus()
        page.keyboard.press("ArrowRight")
        expect(page.get_by_role("tab", name="Image")).to_be_focused()
        expect(page.get_by_role("tab", name="Image")).to_have_attribute("aria-selected", "true")
        expect(page.locator("#panel-image")).to_be_visible()
        expect(page.locator("#panel-chat")).to_be_hidden()
        page.keyboard.press("End")
        expect(page.get_by_role("tab", name="Embeddings")).to_have_attribute("aria-selected", "true")
        page.keyboard.press("Home")
        expect(page.get_by_role("tab", name="Chat")).to_have_attribute("aria-selected", "true")
        page.locator("#models tr[data-model='chat'] button").focus()
        page.keyboard.press("Enter")  # a model is selected with the keyboard like a click
        expect(page.locator("#detail-title")).to_have_text("chat")
        unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter((el) => el.type !== 'hidden' && !el.closest('[hidden]'))
            .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                            && !el.textContent.trim())
            .map((el) => el.outerHTML.slice(0, 80))""")
        assert unnamed == []
        headings = page.evaluate("[...document.querySelectorAll('h1, h2')].map((h) => h.textContent.trim())")
        assert headings[0] == "modelyard" and "Playground" in headings and "Models" in headings
