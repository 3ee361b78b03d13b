"""Generated images kept for `response_format: url`: bounded in count, bytes and time.

Each image gets a random 192-bit id; the URL is a capability (whoever holds it may fetch the PNG
until it expires), like the signed URLs OpenAI returns, so clients that render it in an <img> tag
(Open WebUI, browsers) need no API key to show it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict


class ImageStore:
    def __init__(self, ttl_s: float = 3600.0, max_items: int = 256, max_bytes: int = 256 * 1024 * 1024):
        self.ttl_s = ttl_s
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, png: bytes) -> tuple[str, float]:
        """Store a PNG; returns its id and expiry (unix time). Oldest images make room."""
        image_id = secrets.token_urlsafe(24)
        expires = time.time() + self.ttl_s
        with self._lock:
            self._expire(time.time())
            while self._items and (len(self._items) >= self.max_items or self._bytes + len(png) > self.max_bytes):
                _, (old, _) = self._items.popitem(last=False)
                self._bytes -= len(old)
            self._items[image_id] = (png, expires)
            self._bytes += len(png)
        return image_id, expires

    def get(self, image_id: str) -> bytes | None:
        with self._lock:
            self._expire(time.time())
            item = self._items.get(image_id)
            return item[0] if item else None

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self, now: float) -> None:
        # Items expire in insertion order (one ttl for all), so the oldest are at the front.
        while self._items:
            image_id, (png, expires) = next(iter(self._items.items()))
            if expires > now:
                return
            del self._items[image_id]
            self._bytes -= len(png)
