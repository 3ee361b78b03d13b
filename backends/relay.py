"""One request's side of a batching scheduler thread (gguf/scheduler.py, hf/batch.py): the events the
thread puts on the request's queue become the request's chunks and result."""

from __future__ import annotations

import queue

from backends.contract import Cancel, Chunks

LET_GO_WAIT_S = 5.0  # longest an abandoned request waits for its scheduler between events


def relay(events: queue.Queue, cancel: Cancel) -> Chunks:
    """Yield each ("chunk", c), return the ("end", result), raise the ("error", exception). A reader that
    stops early (the generator closed) cancels the request and waits for the scheduler to let it go, so
    nothing the request owns is freed under the scheduler's feet; LetGoTimeout if it never does."""
    ended = False
    try:
        while True:
            kind, payload = events.get()
            if kind == "chunk":
                yield payload
            elif kind == "end":
                ended = True
                return payload
            else:
                ended = True
                raise payload
    finally:
        if not ended:
            cancel.set()
            try:
                while events.get(timeout=LET_GO_WAIT_S)[0] == "chunk":
                    pass
            except queue.Empty:
                raise LetGoTimeout from None


class LetGoTimeout(Exception):
    """The scheduler never let an abandoned request go (it is gone: shutdown)."""
