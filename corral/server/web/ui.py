"""The web UI's plumbing: who is signed in, what they may see, how a page is sent.

Invariants:
- Every UI route takes ``viewer``: without a live web session a GET is sent to ``/login`` (back
  here afterwards) and anything else is a 401 page; nothing is read first.
- Reads are authorized by ``authz.decide`` on the resource's team, exactly as the API does; a
  page refused for any reason is the not-found page (404), so an outsider cannot tell that a
  project, run or policy exists. Listings show only ``visible_teams``.
- Every state-changing request (anything but GET/HEAD) must carry the session's CSRF token in
  ``X-CSRF-Token`` (``static/app.js`` adds it to every htmx request); without it: 403 and
  nothing is read or changed. Changes that ``authz`` marks step-up (approvals, policies,
  credentials, members) need a fresh web session (``websession.STEP_UP`` after login).
- Every response of a UI route carries ``pages.HEADERS``: a CSP with ``script-src 'self'``
  and no ``unsafe-inline`` anywhere, ``frame-ancestors 'none'``, no caching. Templates
  autoescape everything; agent-controlled text is only ever a template variable.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.server.api.deps import get_db, get_session, user_principal
from corral.server.authz import Permission, Principal, decide, visible_teams
from corral.server.errors import ApiError
from corral.server.models import Project, Team
from corral.server.web import session as websession
from corral.server.web.pages import HEADERS, env
from corral.server.web.timeline import when

__all__ = ["PageRefused", "Viewer", "make_router", "not_found", "page", "partial", "viewer"]

SAFE = ("GET", "HEAD")
env.filters["when"] = when


class PageRefused(Exception):
    def __init__(self, status: int, title: str, text: str) -> None:
        super().__init__(text)
        self.status, self.title, self.text = status, title, text


def not_found() -> PageRefused:
    return PageRefused(404, "Not found", "There is nothing here, or it is not yours to see.")


class _Redirect(Exception):
    def __init__(self, url: str) -> None:
        self.url = url


class UiRoute(APIRoute):
    """Turns refusals into HTML pages and puts the security headers on every answer."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                response = await inner(request)
            except _Redirect as err:
                response = RedirectResponse(err.url, status_code=303)
            except PageRefused as err:
                response = _refusal(request, err)
            for name, value in HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return handler


def make_router() -> APIRouter:
    return APIRouter(include_in_schema=False, route_class=UiRoute)


def _refusal(request: Request, err: PageRefused) -> HTMLResponse:
    if request.headers.get("hx-request"):
        html = env.get_template("ui/_refused.html").render(title=err.title, text=err.text)
    else:
        html = env.get_template("ui/refused.html").render(title=err.title, text=err.text,
                                                          viewer=None)
    return HTMLResponse(html, status_code=err.status)


@dataclass
class Viewer:
    request: Request
    session: Session
    current: websession.Current
    principal: Principal

    @property
    def csrf(self) -> str:
        return self.current.csrf

    @property
    def step_up(self) -> bool:
        return self.current.step_up

    def can(self, permission: Permission, team_id: int | None = None) -> bool:
        try:
            decide(self.principal, permission, team_id=team_id)
        except ApiError:
            return False
        return True

    def allow(self, permission: Permission, team_id: int | None = None) -> None:
        """Refuse a page view: the outsider's 404 whatever the reason."""
        if not self.can(permission, team_id):
            raise not_found()

    def allow_change(self, permission: Permission, team_id: int | None = None) -> None:
        """Refuse a change: 404 outside the team, else 403 saying what is missing."""
        try:
            decide(self.principal, permission, team_id=team_id)
        except ApiError as err:
            from corral.server.admin_log import record_now

            record_now(get_db(self.request), self.principal.actor, "authz.refused",
                       f"{self.request.method} {self.request.url.path}", status=err.status,
                       reason=err.message, kind="web")
            if err.status == 404:
                raise not_found() from None
            title = "Sign in again" if err.code == "step_up_required" else "Not allowed"
            raise PageRefused(403, title, err.message) from None

    def teams(self) -> set[int] | None:
        return visible_teams(self.principal)

    def projects(self) -> list[Project]:
        query = select(Project).order_by(Project.name)
        visible = self.teams()
        if visible is not None:
            query = query.where(Project.team_id.in_(visible))
        return list(self.session.scalars(query))

    def project(self, name: str, permission: Permission) -> Project:
        row = self.session.scalar(select(Project).where(Project.name == name))
        if row is None:
            raise not_found()
        self.allow(permission, row.team_id)
        return row

    def team(self, name: str, permission: Permission) -> Team:
        row = self.session.scalar(select(Team).where(Team.name == name))
        if row is None:
            raise not_found()
        self.allow(permission, row.id)
        return row


def viewer(request: Request, session: Session = Depends(get_session)) -> Viewer:
    found = websession.current(request, session)
    if found is None:
        if request.method in SAFE and not request.headers.get("hx-request"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise _Redirect("/login?next=" + urllib.parse.quote(target, safe=""))
        raise PageRefused(401, "Signed out", "Your session has ended; sign in again.")
    if request.method not in SAFE and \
            not websession.csrf_ok(found, request.headers.get("x-csrf-token")):
        raise PageRefused(403, "Refused", "This request did not come from this server's pages "
                          "(CSRF token missing or wrong).")
    session.commit()  # the session's last-seen touch
    principal = user_principal(session, found.user, token_id=None, step_up=found.step_up)
    return Viewer(request, session, found, principal)


NAV = [("overview", "/", "Overview"), ("sandboxes", "/sandboxes", "Sandboxes"),
       ("approvals", "/approvals", "Approvals"), ("policies", "/policies", "Policies"),
       ("projects", "/projects", "Projects"), ("teams", "/teams", "Teams"),
       ("credentials", "/credentials", "Credentials"), ("spend", "/spend", "Spend"),
       ("audit", "/audit", "Audit"), ("tokens", "/tokens", "Tokens")]


def page(v: Viewer, template: str, nav: str, **context: Any) -> HTMLResponse:
    html = env.get_template(template).render(viewer=v, user=v.current.user, csrf=v.csrf,
                                             nav=NAV, active=nav, **context)
    return HTMLResponse(html)


def partial(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(env.get_template(template).render(**context), status_code=status)
