"""Host check, bearer keys and body caps, before any route runs (hardening items 2, 3 and 5)."""

from __future__ import annotations

import hashlib
import hmac
import re

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import AuthenticationError, HostNotAllowed, ModelyardError, PayloadTooLarge, error_response
from server.settings import Settings, is_loopback

PUBLIC_PATHS = frozenset({"/health", "/health/ready", "/metrics", "/", "/ui"})
# Image URLs carry a random 192-bit id that expires: the URL itself is the credential, so an <img>
# tag (Open WebUI, a browser) can show it without the API key. The Host check still applies.
# The page's files (/ui, /ui/*) hold no data: a browser loads them without a key, and the page
# then asks for one and sends it with every call it makes (server/routes/ui.py).
PUBLIC_PREFIXES = ("/v1/images/files/", "/ui/")


class KeyRing:
    """API keys held as digests; every key is compared, without early exit, in constant time."""

    def __init__(self, keys: list[str]):
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, presented: str) -> bool:
        digest = hashlib.sha256(presented.encode()).digest()
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched


# host [":" port], the host a name or a bracketed IPv6 address: nothing else (no userinfo, no path)
_AUTHORITY = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::[0-9]{1,5})?")


def host_allowed(host_header: str, extra: frozenset[str] = frozenset()) -> bool:
    """A Host header naming this machine's loopback, or one of the `extra` names the user allowed
    (DNS rebinding: an attacker's name resolving to 127.0.0.1 still says its own name here).
    `localhost:1@evil.example` or `localhost:80.evil.example` are not an authority with host
    localhost, so they are refused."""
    match = _AUTHORITY.fullmatch(host_header.strip())
    if match is None:
        return False
    host = (match["ipv6"] or match["name"]).lower()
    return host == "localhost" or host in extra or is_loopback(host)


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.keys = KeyRing(settings.api_keys)
        self.check_host = settings.binds_loopback
        self.extra_hosts = frozenset(name.strip().lower() for name in settings.allowed_hosts if name.strip())
        self.max_body = settings.max_body_bytes
        self.max_upload = settings.max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        try:
            self._admit(scope, headers)
        except ModelyardError as exc:
            return await error_response(exc, scope["path"])(scope, receive, send)
        limit = self.max_upload if headers.get("content-type", "").startswith("multipart/") else self.max_body
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await error_response(_too_large(limit), scope["path"])(scope, receive, send)
        await self.app(scope, _capped(receive, limit), send)

    def _admit(self, scope: Scope, headers: Headers) -> None:
        if self.check_host and not host_allowed(headers.get("host", ""), self.extra_hosts):
            raise HostNotAllowed("this server only answers requests addressed to localhost"
                                 + (" or " + ", ".join(sorted(self.extra_hosts)) if self.extra_hosts else "")
                                 + " (MODELYARD_ALLOWED_HOSTS names more)")
        path = scope["path"]
        if (not self.keys.enabled or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
                or scope["method"] == "OPTIONS"):
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":  # Anthropic's clients send the key as x-api-key
            token = headers.get("x-api-key", "")
        if not token.strip() or not self.keys.accepts(token.strip()):
            raise AuthenticationError("Incorrect API key provided.")


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds the {limit}-byte limit")


def _capped(receive: Receive, limit: int) -> Receive:
    """Count body bytes as they arrive (clients may omit or lie in Content-Length)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                # FastAPI turns anything but an HTTPException raised while reading a body into a 400
                raise HTTPException(413, _too_large(limit).message)
        return message

    return wrapped
