"""Responses kept (store: true) so that previous_response_id and GET/DELETE /v1/responses/{id} work:
in memory, bounded in count (oldest out first) and in age."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stored:
    response: dict[str, Any]
    messages: list[dict[str, Any]]  # the whole conversation so far, as chat messages, output included
    expires_at: float


class ResponseStore:
    def __init__(self, ttl_s: float, max_entries: int):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def put(self, rid: str, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        self._items[rid] = Stored(response, messages, time.monotonic() + self.ttl_s)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def get(self, rid: str) -> Stored | None:
        stored = self._items.get(rid)
        if stored is None or stored.expires_at < time.monotonic():
            self._items.pop(rid, None)
            return None
        return stored

    def delete(self, rid: str) -> bool:
        return self._items.pop(rid, None) is not None
