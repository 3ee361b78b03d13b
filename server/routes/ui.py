"""The built-in page: GET /ui (and / redirects there) and its few files from server/static.

No build step and nothing fetched from elsewhere: the page works offline. Its files hold no data,
so they load without a key (server/security.py); every call the page makes carries the key the
person entered, kept in the browser's session storage, through the same checks as any client.
The page only ever sets text, never markup, from what the server or a model returns, and its
Content-Security-Policy allows scripts from this server alone.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from server.errors import NotFound

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).resolve().parent.parent / "static"
FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
         "icon.svg": "image/svg+xml"}
HEADERS = {
    # blob: and data: for the images, recordings and speech the playground shows and plays
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data: blob:; media-src 'self' blob:; base-uri 'self'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated, so an upgraded server's page is never stale
}


@router.get("/")
async def root() -> Response:
    return RedirectResponse("ui", status_code=307)  # relative: kept under a proxy's path prefix


@router.get("/ui")
async def page(request: Request) -> Response:
    # The base is the app's root (uvicorn --root-path behind a proxy): the page's links and API
    # calls are relative to it.
    base = html.escape(request.scope.get("root_path", "").rstrip("/") + "/")
    return HTMLResponse((STATIC / "index.html").read_text().replace("{{base}}", base), headers=HEADERS)


@router.get("/ui/{name}")
async def asset(name: str) -> Response:
    if name not in FILES:
        raise NotFound(f"no such file: {name[:100]}")
    return FileResponse(STATIC / name, media_type=FILES[name], headers=HEADERS)
