"""The dashboard: one static page at /dashboard that draws the JSON views of the API with plotly.js.

Nothing is built or fetched at run time: the page, its script and stylesheet ship in app/static, and plotly.js
is served from the installed `plotly` package. The page needs no key; it asks for one in the browser (kept in
sessionStorage, or localStorage when the user ticks "remember") when the data routes answer 401, and sends it
as `Authorization: Bearer`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.errors import ApiError

STATIC = Path(__file__).parents[1] / "static"
ASSETS = {
    "dashboard.js": (STATIC / "dashboard.js", "text/javascript"),
    "dashboard.css": (STATIC / "dashboard.css", "text/css"),
    "plotly.min.js": (Path(str(files("plotly") / "package_data" / "plotly.min.js")), "text/javascript"),
}
# The page is small and changes with the code; the assets are revalidated by their ETag after an hour.
PAGE_CACHE = {"Cache-Control": "no-cache"}
ASSET_CACHE = {"Cache-Control": "public, max-age=3600"}

router = APIRouter(include_in_schema=False)


@router.get("/dashboard")
async def page() -> FileResponse:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html", headers=PAGE_CACHE)


@router.get("/dashboard/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise ApiError(404, "not_found", f"the dashboard has no file {name!r}")
    path, media_type = ASSETS[name]
    return FileResponse(path, media_type=media_type, headers=ASSET_CACHE)
