"""How the app is served: the uvicorn server `modelyard serve` runs, built from Settings alone.

The test fixture builds its server with the same function, so what the tests exercise (timeouts,
caps, the connection guard, the shutdown sequence) is what `modelyard serve` does.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from fastapi import FastAPI

from server.connections import ConnectionLimits, guarded_protocol
from server.errors import ShuttingDown
from server.settings import Settings

log = logging.getLogger("modelyard")


class Server(uvicorn.Server):
    """uvicorn's server, which also ends what still runs before the shutdown grace is up.

    An open page's /admin/events stream never ends by itself and would hold the shutdown for the
    whole grace: those streams end first. uvicorn cancels the tasks still running when the grace
    ends, so a generation's stream would stop mid-body; ending those a moment earlier gives each
    stream an error event and [DONE] instead (and each non-streaming request a 503)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_s: float):
        super().__init__(config)
        self.app = app
        self.grace_s = grace_s

    async def shutdown(self, sockets=None) -> None:
        services = getattr(self.app.state, "services", None)
        if services is not None:
            services.events.close()
            margin = min(1.0, self.grace_s / 2)
            error = ShuttingDown("the server shut down before this request finished", retry_after_s=5)
            asyncio.get_running_loop().call_later(self.grace_s - margin, services.in_flight.end_all, error)
        await super().shutdown(sockets)


def uvicorn_server(app: FastAPI, settings: Settings) -> Server:
    limits = ConnectionLimits.from_settings(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # server/access.py writes the access log (with request ids, escaped)
        http=guarded_protocol(limits),
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]  # a float works
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=settings.max_header_bytes,  # if uvicorn ever picks h11
    )
    log.debug("connection limits: %s", limits)
    return Server(config, app, settings.shutdown_grace_s)
