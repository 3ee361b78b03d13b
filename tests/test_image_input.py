"""Images in chat requests are made safe before any model sees them (server/image_input.py)."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import pytest
from PIL import Image

from server.image_input import MAX_SIDE, ImageError, ImagePolicy, attach, canonical, image_urls


def encoded(image: Image.Image, fmt: str, **save) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(data).decode()


def decoded(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def run(url: str, policy: ImagePolicy | None = None) -> str:
    return asyncio.run(canonical(url, policy or ImagePolicy()))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_each_allowed_format_becomes_a_clean_png(fmt):
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    clean = decoded(run(data_url(encoded(image, fmt), f"image/{fmt.lower()}")))
    assert clean.format == "PNG" and clean.size == (40, 20) and clean.mode == "RGB"


def test_the_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to show
    photo = encoded(Image.new("RGB", (40, 20)), "JPEG", exif=exif.tobytes())
    assert decoded(run(data_url(photo, "image/jpeg"))).size == (20, 40)


def test_a_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    assert decoded(run(data_url(gif.getvalue(), "image/gif"))).getpixel((0, 0))[0] > 200


@pytest.mark.parametrize("payload", [b"just some text, not an image", b"\x89PNG\r\n\x1a\nbroken"])
def test_a_non_image_posing_as_png_is_refused(payload):
    with pytest.raises(ImageError, match="not a PNG, JPEG"):
        run(data_url(payload))


def test_an_image_over_the_pixel_cap_is_refused_before_it_is_decoded():
    bomb = encoded(Image.new("1", (12_000, 12_000)), "PNG")  # 144 Mpx in a few kilobytes
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="pixels"):
        run(data_url(bomb), ImagePolicy(max_pixels=40_000_000))


def test_bytes_over_the_cap_and_broken_base64_are_refused():
    with pytest.raises(ImageError, match="larger than"):
        run(data_url(b"x" * 2000), ImagePolicy(max_bytes=1000))
    with pytest.raises(ImageError, match="base64"):
        run("data:image/png;base64,@@@")
    with pytest.raises(ImageError, match="data: URL"):
        run("file:///etc/passwd")


def test_a_remote_url_is_refused_unless_its_host_is_enabled():
    with pytest.raises(ImageError, match="not enabled"):
        run("https://images.example.com/cat.png")


def test_an_enabled_host_resolving_to_a_private_address_is_refused():
    for host, address in (("localhost", "127.0.0.1"), ("intranet.example", "10.0.0.7"),
                          ("metadata.example", "169.254.169.254"), ("v6.example", "::1")):
        policy = ImagePolicy(fetch_hosts=frozenset({host}), resolve=lambda _h, a=address: [a])
        with pytest.raises(ImageError, match="private address"):
            run(f"http://{host}/cat.png", policy)


def fake_web(routes: dict[str, httpx.Response]) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: routes.get(str(request.url), httpx.Response(404)))


def public(host: str, transport: httpx.MockTransport, **limits) -> ImagePolicy:
    return ImagePolicy(fetch_hosts=frozenset({host}), resolve=lambda _h: ["93.184.216.34"], transport=transport,
                       **limits)


def test_an_enabled_public_host_is_fetched_following_redirects_on_that_host():
    png = encoded(Image.new("RGB", (4, 4)), "PNG")
    web = fake_web({"https://img.example/a.png": httpx.Response(302, headers={"location": "/b.png"}),
                    "https://img.example/b.png": httpx.Response(200, content=png)})
    assert decoded(run("https://img.example/a.png", public("img.example", web))).size == (4, 4)


def test_a_redirect_to_another_host_an_error_status_or_a_huge_body_is_refused():
    png = encoded(Image.new("RGB", (4, 4)), "PNG")
    web = fake_web({"https://img.example/away.png": httpx.Response(301, headers={"location": "http://10.0.0.1/x"}),
                    "https://img.example/gone.png": httpx.Response(404),
                    "https://img.example/big.png": httpx.Response(200, content=png * 100)})
    policy = public("img.example", web, max_bytes=len(png) * 10)
    for path, reason in (("away", "another host"), ("gone", "404"), ("big", "larger than")):
        with pytest.raises(ImageError, match=reason):
            run(f"https://img.example/{path}.png", policy)


def test_image_parts_are_found_in_messages():
    messages = [{"role": "system", "content": "hi"},
                {"role": "user", "content": [{"type": "text", "text": "what is this"},
                                             {"type": "image_url", "image_url": {"url": "data:a"}},
                                             {"type": "image_url", "image_url": "data:b"}]}]
    assert image_urls(messages) == [(1, 1, "data:a", "auto"), (1, 2, "data:b", "auto")]


def parts(*details: str) -> list[dict]:
    photo = data_url(encoded(Image.new("RGB", (3000, 1500), (0, 90, 0)), "PNG"))
    return [{"role": "user", "content": [{"type": "text", "text": "compare"},
                                         *({"type": "image_url", "image_url": {"url": photo, "detail": d}}
                                           for d in details)]}]


def test_attach_points_each_image_part_at_its_png_and_leaves_the_request_alone():
    messages = parts("auto", "low")
    out, images = asyncio.run(attach(messages, ImagePolicy(), max_images=4, tile=336))
    assert out[0]["content"] == [{"type": "text", "text": "compare"}, {"type": "image", "image": 0},
                                 {"type": "image", "image": 1}]
    assert messages[0]["content"][1]["type"] == "image_url"  # the caller's copy is not rewritten
    sizes = [Image.open(io.BytesIO(base64.b64decode(png))).size for png in images]
    assert sizes == [(MAX_SIDE, MAX_SIDE // 2), (336, 168)]  # detail low: one tile of the encoder


def test_attach_refuses_more_images_than_the_model_reads_and_names_a_bad_part():
    with pytest.raises(ImageError, match="at most 1 images"):
        asyncio.run(attach(parts("auto", "auto"), ImagePolicy(), max_images=1, tile=None))
    broken = parts("auto")
    broken[0]["content"][1] = {"type": "image_url", "image_url": {"url": data_url(b"not an image")}}
    with pytest.raises(ImageError) as refused:
        asyncio.run(attach(broken, ImagePolicy(), max_images=4, tile=None))
    assert refused.value.where == "messages.0.content.1"
