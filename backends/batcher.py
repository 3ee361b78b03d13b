"""Concurrent calls' inputs run through an engine together (embeddings: one forward for many requests).

Leader and followers: a call that finds the engine free takes every waiting call's items and runs
them as one batch; calls that arrive meanwhile wait, and when the batch is done one of them runs the
next batch with all of theirs. Nothing waits for a batch to fill: an idle engine starts at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from backends.contract import Cancel, ErrorCode, InvalidInput

Item = TypeVar("Item")
Out = TypeVar("Out")

_POLL_S = 0.05  # how often a waiting call looks at its Cancel


class _Job(Generic[Item, Out]):
    def __init__(self, items: Sequence[Item]):
        self.items = items
        self.results: list[Out] = []
        self.error: BaseException | None = None
        self.done = False


class Batcher(Generic[Item, Out]):
    """`run(items) -> one output per item`, called on one thread at a time with the items of
    every call waiting then (in their order); `batches` counts the calls to `run`."""

    def __init__(self, run: Callable[[list[Item]], list[Out]]):
        self._run = run
        self._cv = threading.Condition()
        self._waiting: list[_Job[Item, Out]] = []
        self._busy = False
        self.batches = 0

    def submit(self, items: Sequence[Item], cancel: Cancel) -> list[Out]:
        """This call's outputs; InvalidInput(CANCELLED) if it is cancelled before its batch starts."""
        job: _Job[Item, Out] = _Job(items)
        with self._cv:
            self._waiting.append(job)
            while not job.done:
                if not self._busy:
                    self._lead()
                    continue
                self._cv.wait(_POLL_S)
                if cancel and job in self._waiting:
                    self._waiting.remove(job)
                    raise InvalidInput("request cancelled while waiting for the model", code=ErrorCode.CANCELLED)
        if job.error is not None:
            raise job.error
        return job.results

    def _lead(self) -> None:
        """Run every waiting job as one batch (called holding the condition; runs without it)."""
        jobs, self._waiting = self._waiting, []
        self._busy = True
        self._cv.release()
        try:
            items = [item for job in jobs for item in job.items]
            try:
                outputs = self._run(items)
                if len(outputs) != len(items):
                    raise RuntimeError(f"the engine returned {len(outputs)} outputs for {len(items)} inputs")
            except BaseException as exc:  # every job of the batch fails alike
                for job in jobs:
                    job.error = exc
            else:
                start = 0
                for job in jobs:
                    job.results = outputs[start:start + len(job.items)]
                    start += len(job.items)
        finally:
            self._cv.acquire()
            self.batches += 1
            for job in jobs:
                job.done = True
            self._busy = False
            self._cv.notify_all()
