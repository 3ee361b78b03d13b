"""The generations in progress, so a shutdown can end them with an error rather than cut them off."""

from __future__ import annotations

from typing import Protocol

from server.errors import ModelyardError


class Failable(Protocol):
    def fail(self, error: ModelyardError) -> None: ...


class InFlight:
    def __init__(self) -> None:
        self._live: set[Failable] = set()

    def add(self, generation: Failable) -> None:
        self._live.add(generation)

    def discard(self, generation: Failable) -> None:
        self._live.discard(generation)

    def end_all(self, error: ModelyardError) -> None:
        """Every generation still running ends with `error` (a stream: an error event, then [DONE])."""
        for generation in list(self._live):
            generation.fail(error)

    def __len__(self) -> int:
        return len(self._live)
