"""``/playground``: the web page for people who do not write code (chat, analyze, compare, tune,
feedback, collections), static files shipped in ``serve/playground/``.

The page loads without a key (it has nothing secret: the files are the same for everyone) and
signs in with the tenant's API key, which it keeps in ``sessionStorage`` and sends as a bearer
header to the same public API any client calls; the server never sees it in a URL. Every
response carries a strict Content-Security-Policy: scripts, styles, images and connections
only from this server, no inline script, no frames, no plugins, so text a model, a transcript
or a document holds cannot run as code even if it ever reached the DOM as markup.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from serve.errors import APIError

router = APIRouter(tags=["playground"], include_in_schema=False)

ROOT = Path(__file__).resolve().parents[1] / "playground"
PREFIX = "/playground"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def is_playground(path: str) -> bool:
    """Paths served without a key (the page's own static files)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


@router.get(PREFIX)
async def playground_root() -> Response:
    return RedirectResponse(PREFIX + "/", status_code=307, headers=HEADERS)


@router.get(PREFIX + "/{name:path}")
async def playground_file(name: str) -> Response:
    name = name or "index.html"
    path = (ROOT / name).resolve()
    if path.parent != ROOT or path.suffix not in TYPES or not path.is_file():
        raise APIError(404, f"no playground file {name!r}", code="unknown_url")
    return FileResponse(path, media_type=TYPES[path.suffix], headers=HEADERS)
