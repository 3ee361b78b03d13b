"""Images in chat requests, made safe before any model sees them.

An `image_url` part is a `data:` URL, or an http(s) URL when fetching is on for its host (off by
default: a server that fetches any URL a request names is an SSRF hole). A fetched URL must resolve
to public addresses only, redirects may not leave the host, and size and time are capped. Every
image is decoded with Pillow from an allow-list of formats (PNG, JPEG, WebP, GIF's first frame),
refused past a pixel cap read from the header before decoding (decompression bombs), turned upright
by its EXIF orientation, scaled down to what the model reads (`detail: low`: one tile of its
encoder; otherwise at most MAX_SIDE pixels a side) and handed on as a PNG: the worker only ever sees
clean pixels. `attach` does this for a whole conversation, each image part becoming an ImagePart
(backends/contract.py) that points into the list of PNGs sent with the call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

FORMATS = {"PNG", "JPEG", "WEBP", "GIF"}
MAX_REDIRECTS = 3
MAX_SIDE = 2048  # no model reads more (LLaVA-NeXT's largest grid is 1344 pixels); the pipe carries less


class ImageError(Exception):
    """The image cannot be used (a 400 naming the message part)."""

    def __init__(self, message: str, where: str | None = None):
        super().__init__(message)
        self.where = where  # "messages.2.content.1": the part it came from, once known


@dataclass
class ImagePolicy:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    fetch_hosts: frozenset[str] = frozenset()  # hosts whose http(s) URLs may be fetched; empty: none
    fetch_timeout_s: float = 10.0
    resolve: Callable[[str], list[str]] = field(default=lambda host: _addresses(host))
    transport: httpx.AsyncBaseTransport | None = None  # tests replace the network

    @classmethod
    def of(cls, settings: Any) -> ImagePolicy:
        """The policy server/settings.py configures."""
        return cls(max_bytes=settings.image_max_bytes, max_pixels=settings.image_max_pixels,
                   fetch_hosts=frozenset(host.lower() for host in settings.image_fetch_hosts),
                   fetch_timeout_s=settings.image_fetch_timeout_s)


def _addresses(host: str) -> list[str]:
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)})
    except socket.gaierror:
        raise ImageError(f"image URL host {host!r} does not resolve") from None


async def canonical(url: str, policy: ImagePolicy, max_side: int = MAX_SIDE) -> str:
    """The image at `url` as a PNG data URL at most `max_side` pixels a side, or ImageError saying why not."""
    return "data:image/png;base64," + await _png_base64(url, policy, max_side)


async def _png_base64(url: str, policy: ImagePolicy, max_side: int) -> str:
    if url.startswith("data:"):
        data = _from_data_url(url, policy)
    elif url.startswith(("http://", "https://")):
        data = await _fetch(url, policy)
    else:
        raise ImageError("image_url must be a data: URL (or an http(s) URL of a host fetching is enabled for)")
    png = await asyncio.to_thread(_clean_png, data, policy, max_side)  # decoding is CPU work: off the event loop
    return base64.b64encode(png).decode("ascii")


def _from_data_url(url: str, policy: ImagePolicy) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or ";base64" not in header:
        raise ImageError("an image data: URL must be base64 (data:image/png;base64,...)")
    if len(payload) * 3 // 4 > policy.max_bytes:
        raise ImageError(f"the image is larger than {policy.max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("the image data: URL is not valid base64") from None


async def _fetch(url: str, policy: ImagePolicy) -> bytes:
    host = urlsplit(url).hostname or ""
    if host.lower() not in policy.fetch_hosts:
        raise ImageError(f"fetching images from {host!r} is not enabled (MODELYARD_IMAGE_FETCH_HOSTS); "
                         "send the image as a data: URL")
    async with httpx.AsyncClient(timeout=policy.fetch_timeout_s, follow_redirects=False,
                                 transport=policy.transport) as client:
        for _ in range(MAX_REDIRECTS + 1):
            _check_public(host, policy)
            try:
                async with client.stream("GET", url) as response:
                    if response.is_redirect:
                        target = urljoin(url, response.headers.get("location", ""))
                        if (urlsplit(target).hostname or "").lower() != host.lower():
                            raise ImageError("the image URL redirects to another host")
                        url = target
                        continue
                    if response.status_code != 200:
                        raise ImageError(f"fetching the image answered {response.status_code}")
                    return await _capped(response, policy.max_bytes)
            except httpx.HTTPError as exc:
                raise ImageError(f"fetching the image failed ({type(exc).__name__})") from None
    raise ImageError("the image URL redirects too often")


def _check_public(host: str, policy: ImagePolicy) -> None:
    for address in policy.resolve(host):
        ip = ipaddress.ip_address(address)
        if not ip.is_global or ip.is_multicast:
            raise ImageError(f"image URL host {host!r} resolves to a private address; refused")


async def _capped(response: httpx.Response, limit: int) -> bytes:
    chunks, total = [], 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise ImageError(f"the image is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _clean_png(data: bytes, policy: ImagePolicy, max_side: int = MAX_SIDE) -> bytes:
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():  # our own pixel cap, just below, is the one that decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(FORMATS))
        with image:
            width, height = image.size
            if width * height > policy.max_pixels:
                raise ImageError(f"the image has {width}x{height} pixels, over the {policy.max_pixels} allowed")
            image.seek(0)  # a GIF's first frame
            upright = ImageOps.exif_transpose(image).convert("RGB")
            if max(upright.size) > max_side:
                upright.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    except ImageError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise ImageError("the image is not a PNG, JPEG, WebP or GIF Pillow can decode") from None
    out = io.BytesIO()
    upright.save(out, format="PNG")
    return out.getvalue()


def image_urls(messages: list[dict[str, Any]]) -> list[tuple[int, int, str, str]]:
    """(message index, part index, url, detail) of every image part."""
    found = []
    for m, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            for p, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "image_url":
                    url = part.get("image_url")
                    spec = url if isinstance(url, dict) else {"url": str(url or "")}
                    found.append((m, p, str(spec.get("url") or ""), str(spec.get("detail") or "auto")))
    return found


async def attach(messages: list[dict[str, Any]], policy: ImagePolicy, *, max_images: int,
                 tile: int | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The messages with every image part as an ImagePart, and the images they point at (base64 PNGs,
    fetched and decoded concurrently). `detail: low` scales an image to fit one `tile` of the model's
    encoder (fewer image tokens where the model tiles); high and auto keep up to MAX_SIDE."""
    found = image_urls(messages)
    if len(found) > max_images:
        raise ImageError(f"this model reads at most {max_images} images per request; the request has {len(found)}")
    sides = [tile if detail == "low" and tile else MAX_SIDE for *_, detail in found]
    jobs = [_located(m, p, url, policy, side) for (m, p, url, _), side in zip(found, sides, strict=True)]
    images = list(await asyncio.gather(*jobs))
    out = [dict(message) for message in messages]
    for index, (m, p, _, _) in enumerate(found):
        if out[m]["content"] is messages[m]["content"]:
            out[m]["content"] = list(out[m]["content"])
        out[m]["content"][p] = {"type": "image", "image": index}
    return out, images


async def _located(m: int, p: int, url: str, policy: ImagePolicy, max_side: int) -> str:
    try:
        return await _png_base64(url, policy, max_side)
    except ImageError as exc:
        raise ImageError(str(exc), where=f"messages.{m}.content.{p}") from None
