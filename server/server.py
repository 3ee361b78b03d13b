"""The uvicorn server `modelyard serve` runs: uvicorn's, ending the event streams as it stops."""

from __future__ import annotations

import uvicorn


class Server(uvicorn.Server):
    """uvicorn waits for every response in flight before it stops, and an open page's
    /admin/events stream never ends by itself: it would hold the shutdown for the whole grace
    period. So the streams are ended first; requests being generated still get their grace."""

    async def shutdown(self, sockets=None) -> None:
        services = getattr(self.config.app.state, "services", None)
        if services is not None:
            services.events.close()
        await super().shutdown(sockets)
