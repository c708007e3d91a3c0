"""``corral login`` / ``logout`` / ``whoami``: a user's SSO login to corral server.

Invariants:
- The login goes through the server: the device flow (RFC 8628) when the IdP offers it, else
  the loopback redirect with PKCE (RFC 8252) on 127.0.0.1; the CLI never sees the IdP's
  tokens, only the server's own token.
- The stored login is ``login.json`` in the invoking user's config dir (``SUDO_USER``'s under
  sudo, not root's), mode 0600, owned by that user; it holds the least-privilege token.
- Under sudo that directory is written and unlinked with the caller's own uid, gid and groups
  (``_as_invoker``), never as root: root following links the caller placed there would write,
  chown or delete whatever they point at.
- ``--step-up`` prints a short-lived (10 min) token on stdout for one command
  (``CORRAL_TOKEN=$(corral login --step-up) corral approvals approve ...``) and stores nothing:
  a file the agent's user can read would hand the agent the step-up.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import os
import pwd
import secrets
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import webbrowser
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import typer

from corral.cli.remote import JSON_OPT, SERVER_OPT, client
from corral.errors import UserInputError
from corral.render import visible

__all__ = ["load", "login", "logout", "store_path", "whoami"]


def store_path() -> Path:
    """Where the stored login lives (``corral.runtime.project.login_file``, the one rule)."""
    from corral.runtime.project import login_file

    return login_file()[0]


def load() -> dict[str, Any] | None:
    """The stored login, read with the owner and mode checks every reader applies
    (``corral.runtime.project.stored_login``); None when there is none."""
    from corral.runtime.project import stored_login

    return stored_login()


@contextlib.contextmanager
def _as_invoker() -> Iterator[None]:
    """File operations in the sudo caller's name (their config dir is theirs to arrange: a
    ``~/.config/corral`` symlinked to ``/etc`` made root chown ``/etc`` to them)."""
    sudo_uid = os.environ.get("SUDO_UID", "")
    if os.geteuid() != 0 or not sudo_uid.isdigit() or int(sudo_uid) == 0:
        yield
        return
    entry = pwd.getpwuid(int(sudo_uid))
    egid, groups = os.getegid(), os.getgroups()
    try:  # a failure part-way is undone too: the finally runs from the first change on
        os.setgroups(os.getgrouplist(entry.pw_name, entry.pw_gid))
        os.setegid(entry.pw_gid)
        os.seteuid(entry.pw_uid)
        yield
    finally:
        os.seteuid(0)  # first: only root may set the gid and groups back
        os.setegid(egid)
        os.setgroups(groups)


def _save(data: dict[str, Any]) -> Path:
    path = store_path()
    tmp = path.with_suffix(".tmp")
    try:
        with _as_invoker():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(data, out)
            os.replace(tmp, path)
    except OSError as err:
        raise UserInputError(f"cannot store the login in {path}: {err.strerror} (token "
                             f"{data.get('id')} was issued: 'corral token revoke' it from "
                             "another login)") from None
    return path


def _post(server: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from corral.client.http import check_url

    check_url(server)
    req = urllib.request.Request(server.rstrip("/") + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read() or b"{}")
        except ValueError:
            return err.code, {}
    except (OSError, ValueError) as err:
        raise UserInputError(f"cannot reach the server at {server}: {err}") from None


def _fail(status: int, doc: dict[str, Any]) -> UserInputError:
    error = doc.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return UserInputError(f"login refused: {message or status}")


def _device(server: str, step_up: bool, name: str) -> dict[str, Any] | None:
    status, doc = _post(server, "/auth/device", {"step_up": step_up, "name": name})
    if status == 501:
        return None  # the IdP has no device flow: loopback redirect instead
    if status != 200:
        raise _fail(status, doc)
    where = doc.get("verification_uri_complete") or doc.get("verification_uri")
    print(f"To sign in, open {where}\nand confirm the code {doc.get('user_code')}",
          file=sys.stderr, flush=True)
    interval = max(int(doc.get("interval", 5)), 1)
    deadline = time.monotonic() + int(doc.get("expires_in", 600))
    while time.monotonic() < deadline:
        time.sleep(interval)
        status, answer = _post(server, "/auth/device/poll", {"handle": doc["handle"]})
        if status == 200:
            return answer
        if status == 202:
            if answer.get("status") == "slow_down":
                interval += 5
            continue
        raise _fail(status, answer)
    raise UserInputError("login timed out: the code was not confirmed in time")


class _Catch(http.server.BaseHTTPRequestHandler):
    got: ClassVar[dict[str, str]] = {}

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        type(self).got = {k: v[0] for k, v in query.items()}
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        self.wfile.write(b"corral: signed in; you can close this window.\n")

    def log_message(self, *args: Any) -> None:
        pass


def _loopback(server: str, step_up: bool, name: str) -> dict[str, Any]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(
        b"=").decode()
    state = secrets.token_urlsafe(16)
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Catch)
    redirect = f"http://127.0.0.1:{httpd.server_address[1]}/callback"
    query = urllib.parse.urlencode({"redirect_uri": redirect, "code_challenge": challenge,
                                    "code_challenge_method": "S256", "state": state,
                                    "step_up": str(step_up).lower(), "name": name})
    url = f"{server.rstrip('/')}/auth/cli?{query}"
    print(f"To sign in, open {url}", file=sys.stderr, flush=True)
    webbrowser.open(url)
    thread = threading.Thread(target=httpd.handle_request, daemon=True)
    httpd.timeout = 600
    thread.start()
    thread.join(600)
    httpd.server_close()
    got = _Catch.got
    if got.get("state") != state or "code" not in got:
        raise UserInputError("login failed: the browser did not come back with this login")
    status, doc = _post(server, "/auth/cli/token", {"code": got["code"],
                                                   "code_verifier": verifier})
    if status != 200:
        raise _fail(status, doc)
    return doc


def login(server: str | None = SERVER_OPT,
          step_up: bool = typer.Option(False, "--step-up", help="print a 10-minute token "
                                       "that may decide approvals and change policies "
                                       "(stored nowhere)"),
          no_device: bool = typer.Option(False, "--no-device", help="use the browser "
                                         "(loopback redirect) even if the IdP has a device "
                                         "flow")) -> None:
    """Sign in to corral server through your organisation's SSO."""
    url = server or os.environ.get("CORRAL_SERVER")
    if not url:
        raise UserInputError("no server: pass --server URL or set CORRAL_SERVER")
    name = f"corral login on {os.uname().nodename}"[:100]
    doc = None if no_device else _device(url, step_up, name)
    if doc is None:
        doc = _loopback(url, step_up, name)
    if step_up:
        print(doc["token"])
        print(f"corral: step-up token for {doc['email']}, valid until {doc['expires_at']}",
              file=sys.stderr)
        return
    path = _save({"server": url, "token": doc["token"], "id": doc["id"],
                  "email": doc["email"], "expires_at": doc["expires_at"]})
    print(f"signed in as {doc['email']} (until {doc['expires_at']}); token stored in {path}")


def logout(server: str | None = SERVER_OPT) -> None:
    """Revoke the stored login token on the server and forget it."""
    stored = load()
    if stored is None:
        print("not signed in")
        return
    try:
        client(server or stored.get("server")).request("DELETE", f"/tokens/{int(stored['id'])}")
    finally:
        with _as_invoker():
            store_path().unlink(missing_ok=True)
    print(f"signed out {stored.get('email')}")


def whoami(server: str | None = SERVER_OPT, as_json: bool = JSON_OPT) -> None:
    """Who the server says you are (the stored login, or CORRAL_TOKEN)."""
    me = client(server).get("/whoami")
    if as_json:
        print(json.dumps(me, indent=2, sort_keys=True))
        return
    teams = ", ".join(f"{t} ({r})" for t, r in sorted(me.get("teams", {}).items())) or "none"
    print(visible(f"{me.get('email') or me.get('actor')} ({me.get('kind')}"
                  f"{', step-up' if me.get('step_up') else ''}); teams: {teams}"))
