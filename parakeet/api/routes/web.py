"""The browser page: `GET /` (parakeet/api/web/index.html) and its script, style sheet and AudioWorklet under
`/ui/`. Plain files, no build step, no CDN; every URL in them is relative, so the page also works behind a
reverse proxy that serves the API under a path prefix (open it with the trailing slash: `/stt/`).

The page calls the public API only: `POST transcribe` (file, `timestamps=true`), `POST v1/audio/transcriptions`
(SRT/VTT downloads), `GET health` (the state shown in the header) and `WS v1/realtime` (the microphone, PCM16 at
24 kHz). `PARAKEET_WEB_UI=false` leaves all of it out (`/` is then 404). README "Browser page" documents it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
UI_PREFIX = "/ui"
# What the page needs without an API key (ApiKeyMiddleware): the page itself and every file under UI_PREFIX.
OPEN_PATHS = ("/",)
OPEN_PREFIXES = (UI_PREFIX + "/",)
# The page loads nothing from elsewhere; media and downloads come from blob: URLs of the user's own file.
# 'self' covers same-origin ws:/wss: in CSP Level 3 (https://www.w3.org/TR/CSP3/#match-url-to-source-expression).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
)
# Revalidate on every load (ETag / Last-Modified answer 304), so an upgraded server never runs a stale script.
_HEADERS = {"Cache-Control": "no-cache", "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff"}  # fmt: skip

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    """The page (text/html)."""
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=_HEADERS)


class _UiFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_HEADERS)
        return response


def install(app: FastAPI) -> None:
    """Serve the page at `/` and its files under `/ui/` (404 for anything else there)."""
    app.include_router(router)
    app.mount(UI_PREFIX, _UiFiles(directory=WEB_DIR), name="ui")
