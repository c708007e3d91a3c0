"""Server-rendered pages (Jinja2 templates shipped in the package), with strict headers.

Invariants: templates autoescape everything (user names come from the IdP, paths and
arguments from agents); every page is sent with a Content-Security-Policy that allows scripts
and styles only from this server's own static files (no inline script or style, no eval), no
framing, and is not cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

__all__ = ["HEADERS", "env", "message", "render"]

_env = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                   autoescape=select_autoescape(default=True), auto_reload=False)
env = _env

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def render(request: Request, template: str, context: dict[str, Any],
           status: int = 200) -> HTMLResponse:
    html = _env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def message(request: Request, status: int, title: str, text: str) -> HTMLResponse:
    return render(request, "message.html", {"title": title, "text": text}, status)
