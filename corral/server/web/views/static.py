"""The UI's static files (``static/``: our CSS and JS, and ``vendor/`` built from npm by
``scripts/web_assets.sh``), served from the package: nothing is loaded from elsewhere.

Invariants: only names in ``FILES`` are served (no path from the request reaches the file
system); each is sent with its exact type and ``nosniff``, so nothing else can be made to run
as script or style.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

__all__ = ["FILES", "router"]

ROOT = Path(__file__).resolve().parents[1] / "static"
FILES = {
    "app.css": "text/css", "app.js": "text/javascript",
    "vendor/htmx.min.js": "text/javascript", "vendor/sse.min.js": "text/javascript",
    "vendor/chart.umd.js": "text/javascript",
}
router = APIRouter(include_in_schema=False)


@router.get("/static/{name:path}")
def static(name: str) -> Response:
    kind = FILES.get(name)
    path = ROOT / name
    if kind is None or not path.is_file():
        return Response("not found\n", status_code=404, media_type="text/plain",
                        headers={"X-Content-Type-Options": "nosniff"})
    return FileResponse(path, media_type=kind, headers={
        "Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})
