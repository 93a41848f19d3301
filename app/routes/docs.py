"""The interactive API docs at /docs, with Swagger UI served from the installed `swagger-ui-py` package.

Loading it from a CDN would run a third party's script in the origin where the dashboard keeps its API key.
The page's one inline script (Swagger UI's start-up) is allowed by its hash, and nothing else inline is.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from app.errors import ApiError
from app.headers import CONTENT_SECURITY_POLICY

BUNDLE = Path(str(files("swagger_ui") / "static"))
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

router = APIRouter(include_in_schema=False)


def docs_page() -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="retentive API",
        swagger_js_url="/docs/swagger-ui-bundle.js",
        swagger_css_url="/docs/swagger-ui.css",
        swagger_favicon_url="/docs/favicon-32x32.png",
    )
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(page.body.decode())
    )
    policy = CONTENT_SECURITY_POLICY.replace(
        "default-src 'self';", f"default-src 'self'; script-src 'self' {hashes};"
    )
    page.headers["Content-Security-Policy"] = policy
    return page


@router.get("/docs")
async def docs() -> HTMLResponse:
    return docs_page()


@router.get("/docs/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise ApiError(404, "not_found", f"the docs have no file {name!r}")
    return FileResponse(
        BUNDLE / name, media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=3600"}
    )
