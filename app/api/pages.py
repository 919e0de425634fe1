"""The management page (/manage): collections, subjects, enrollment, identification.

Plain HTML and JavaScript in ``app/static`` (manage.html, manage.js, manage.css) using the
public API with the user's key, which the page asks for first. The page is static: it
holds no data until the key has been checked by ``GET /collections``. Its headers keep it
out of frames and allow scripts, styles and images from this service only (thumbnails
are ``blob:`` URLs made from authenticated fetches).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.api.stream import STATIC_DIR

router = APIRouter(tags=["pages"])
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@router.get("/manage", include_in_schema=False)
async def manage() -> FileResponse:
    return FileResponse(STATIC_DIR / "manage.html", headers=PAGE_HEADERS)
