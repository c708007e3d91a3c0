"""A project's policy from ``corral server`` for a launcher (``corral run|mcp --project P``).

``project_policy(target, local)`` pulls the project's resolved policy (or, with the server
unreachable, its last pulled copy), holds it to the trust rules (``corral.runtime.trust``),
checks that the local input only narrows it, and composes the two.

Invariants:
- The server URL comes from ``--server``, ``CORRAL_SERVER`` or the stored login; the token
  from ``CORRAL_TOKEN`` or the stored login of ``corral login`` (``stored_login``: the invoking
  user's ``login.json``, the sudo caller's under sudo, read only when owned by that user and
  mode 0600, and used only for the server it was made for); a token is never a command-line
  value.
- Each policy document is loaded with ``load_policy_text`` (never trusted: no ``env:``,
  ``file:`` or ``cmd:`` source) and the composition's digest must equal the digest the server
  sent: a stream that was cut or altered on the way is refused.
- The cache (``$CORRAL_HOME/projects/NAME.json``) is written 0600 in a 0700 directory owned by
  root and read back only from such a file; it is used only when the server cannot be reached,
  it is younger than the project's ``max_offline`` and the project does not require the server.
  Everything read from it goes through the same trust rules as a fresh pull.
- Every refusal is a ``CorralError`` with exit status 125 and one line naming the rule.
- ``Pull`` only moves the pull onto a thread (so that waiting for the server overlaps
  the launcher's own work); what it answers goes through exactly the checks above, and a
  refusal it met is raised where the answer is taken.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from corral import dirs
from corral.errors import CorralError

if TYPE_CHECKING:
    from corral.policy.load import LoadedPolicy
    from corral.policy.quick import QuickPolicy
    from corral.policy.resolved import ResolvedPolicy
    from corral.runtime import trust

__all__ = ["ProjectPolicy", "Pull", "Target", "cache_path", "login_file", "project_policy",
           "stored_login", "stored_login_token", "target"]

EXIT_CORRAL = 125
DEFAULT_MAX_OFFLINE = 24 * 3600


def _fail(message: str) -> CorralError:
    return CorralError(message, exit_code=EXIT_CORRAL)


class Target(NamedTuple):
    url: str
    token: str
    project: str
    agent: str | None


class ProjectPolicy(NamedTuple):
    policy: ResolvedPolicy  # the project's, composed with the local input
    digest: str  # the project's policy digest as the server computed it (registered)
    require_server: bool
    offline: str | None  # why the cached copy is used, or None when pulled just now


def login_file() -> tuple[Path, int]:
    """(``login.json`` of the invoking user, that user's uid): where ``corral login`` writes
    it and every reader reads it; the sudo caller's config dir under sudo."""
    import pwd

    sudo_uid = os.environ.get("SUDO_UID", "")
    if os.geteuid() == 0 and sudo_uid.isdigit():
        entry = pwd.getpwuid(int(sudo_uid))
        return Path(entry.pw_dir, ".config", "corral", "login.json"), entry.pw_uid
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(
        os.environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir, ".config")
    return Path(base, "corral", "login.json"), os.getuid()


def stored_login() -> dict[str, Any] | None:
    """The login ``corral login`` stored for the invoking user: ``{"server", "token", ...}``,
    or None when there is none. Read only from a regular file (no symlink) owned by that user
    and readable by no one else; one that is not is refused (125), not silently skipped."""
    path, uid = login_file()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _fail(f"{path}: cannot read the stored login: {err.strerror}") from None
    st = os.fstat(fd)  # before fdopen, which refuses a directory with a traceback
    # The owner is the invoking user alone: under sudo, a root-owned file there is one the
    # caller pointed at (a config dir symlinked to root's), root's login and not theirs.
    if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        os.close(fd)
        raise _fail(f"{path}: the stored login must be a file owned by uid {uid} and "
                    "readable by no one else (mode 0600); run 'corral login' again")
    with os.fdopen(fd) as handle:
        try:
            data = json.loads(handle.read(64 * 1024))
        except ValueError:
            return None
    ok = isinstance(data, dict) and isinstance(data.get("token"), str) and \
        isinstance(data.get("server"), str)
    return data if ok else None


def stored_login_token(url: str | None = None) -> str | None:
    """The stored login's token, when it was made for ``url`` (any server when None): a
    token goes only to the server that issued it."""
    login = stored_login()
    if login is None:
        return None
    if url is not None and url.rstrip("/") != login["server"].rstrip("/"):
        return None
    return str(login["token"])


def target(project: str, agent: str | None, server: str | None) -> Target:
    url = server or os.environ.get("CORRAL_SERVER")
    token = os.environ.get("CORRAL_TOKEN")
    if not token:
        login = stored_login()
        if login is not None and url is None:
            url = login["server"]  # the server the user logged in to
        if login is not None and url is not None and \
                url.rstrip("/") == login["server"].rstrip("/"):
            token = str(login["token"])
    if not url:
        raise _fail(f"--project {project}: no server (pass --server URL or set CORRAL_SERVER)")
    if not token:
        raise _fail(f"--project {project}: no token for {url} (set CORRAL_TOKEN, or "
                    f"'corral login --server {url}')")
    from corral.client import check_url

    try:
        check_url(url)
    except CorralError as err:
        raise _fail(str(err)) from None
    return Target(url, token, project, agent)


# -- the cache ---------------------------------------------------------------------------------

def cache_path(project: str) -> Path:
    return dirs.state_dir() / "projects" / f"{project}.json"


def _owned(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _cache_write(project: str, answer: dict[str, Any], info: dict[str, Any]) -> None:
    folder = dirs.ensure_state_dir() / "projects"
    folder.mkdir(mode=0o700, exist_ok=True)
    if not _owned(folder.stat()):
        raise _fail(f"{folder}: must be owned by uid {os.geteuid()} and mode 0700")
    tmp = folder / f".{project}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"pulled_at": time.time(), "policy": answer, "project": info}, out)
    os.replace(tmp, cache_path(project))


def _cache_read(project: str) -> dict[str, Any] | None:
    path = cache_path(project)
    try:
        if not _owned(path.parent.stat()):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode) or not _owned(st):
            return None
        try:
            data = json.load(handle)
        except ValueError:
            return None
    return data if isinstance(data, dict) else None


# -- pull --------------------------------------------------------------------------------------

def _pull(t: Target) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(resolved policy answer, project info, offline reason)."""
    from corral.client import Client, ClientError, ServerUnavailable

    path = "/projects/" + _quote(t.project)
    try:
        with Client(t.url, t.token, timeout=10.0, user_agent="corral-launcher") as client:
            answer = client.get(path + "/policy")
            # One round trip: the policy's answer carries the project's offline settings
            # (a server that predates that is asked for the project itself).
            info = answer.get("project_info") if isinstance(answer, dict) else None
            if not isinstance(info, dict):
                info = client.get(path)
    except ServerUnavailable as err:
        return _offline(t, str(err))
    except ClientError as err:
        raise _fail(f"--project {t.project}: {err}") from None
    _cache_write(t.project, answer, info)
    return answer, info, None


class Pull:
    """Project ``t``'s policy pulled on its own thread from construction on (hand it to
    ``project_policy``); ``result`` waits for it."""

    def __init__(self, t: Target) -> None:
        self._answer: tuple[dict[str, Any], dict[str, Any], str | None] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(t,), daemon=True,
                                        name="corral-pull")
        self._thread.start()

    def _run(self, t: Target) -> None:
        try:
            self._answer = _pull(t)
        except BaseException as err:  # raised again in the caller's thread
            self._error = err

    def result(self) -> tuple[dict[str, Any], dict[str, Any], str | None]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        return self._answer


def _offline(t: Target, why: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    cached = _cache_read(t.project)
    if cached is None:
        raise _fail(f"--project {t.project}: {why}; and no policy of it was pulled on this host "
                    "before, so nothing can run")
    info = cached.get("project") or {}
    if info.get("require_server"):
        raise _fail(f"--project {t.project}: {why}; the project requires the server "
                    "(--require-server), so nothing runs without it")
    limit = info.get("max_offline_s") or DEFAULT_MAX_OFFLINE
    age = time.time() - float(cached.get("pulled_at", 0))
    if not 0 <= age <= limit:
        raise _fail(f"--project {t.project}: {why}; the policy pulled {int(age)} s ago is older "
                    f"than the project's max_offline ({int(limit)} s), so nothing runs")
    return cached["policy"], info, f"{why}; using the policy pulled {int(age)} s ago"


def _quote(segment: str) -> str:
    import urllib.parse

    return urllib.parse.quote(segment, safe="")


def _documents(project: str, answer: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, text) per policy of the stream, split on the headers the server wrote."""
    text = str(answer.get("yaml", ""))
    heads = []
    for v in answer.get("policies", []):
        scope = "org" if v["scope"] == "org" else project
        heads.append((f"{scope}/{v['filename']}",
                      f"# {scope}/{v['name']} version {v['version']} ({v['filename']}, "
                      f"sha256 {v['digest']})\n"))
    out, pos = [], 0
    starts = []
    for source, head in heads:
        at = text.find(head, pos)
        if at < 0:
            raise _fail(f"--project {project}: the server's policy stream is malformed")
        starts.append((source, at, at + len(head)))
        pos = at + len(head)
    for i, (source, _at, body) in enumerate(starts):
        end = starts[i + 1][1] if i + 1 < len(starts) else len(text)
        doc = text[body:end]
        if i + 1 < len(starts):
            doc = doc.removesuffix("---\n")
        out.append((f"server:{source}", doc))
    return out


def _load_server(project: str, answer: dict[str, Any]) -> list[LoadedPolicy]:
    from corral.policy import PolicyError, load_policy_text
    from corral.policy.compose import compose

    loaded = []
    for source, text in _documents(project, answer):
        try:
            loaded.append(load_policy_text(source, text))
        except PolicyError as err:
            raise _fail(f"--project {project}: refused the server's policy: "
                        f"{'; '.join(err.problems)}") from None
    try:
        digest = compose(loaded).digest
    except PolicyError as err:
        raise _fail(f"--project {project}: {'; '.join(err.problems)}") from None
    if digest != answer.get("digest"):
        raise _fail(f"--project {project}: the server's policy does not match its digest "
                    "(altered or cut on the way); refused")
    return loaded


def project_policy(t: Target, local: Sequence[LoadedPolicy | str], quick: QuickPolicy | None,
                   workspace: str | None, pull: Pull | None = None) -> ProjectPolicy:
    """Pull (or read the cached) project policy, hold it to the trust rules, check that the
    local input only narrows it, and compose them (``CorralError`` 125 naming the rule).

    ``local`` holds ``-p`` specs (loaded only when the compiled form is not cached) or loaded
    policies (never cached)."""
    from corral.runtime import project_cache, trust

    answer, info, offline = pull.result() if pull is not None else _pull(t)
    digest = str(answer.get("digest", ""))
    specs = [x for x in local if isinstance(x, str)]
    name = project_cache.key(digest, specs, quick, workspace) \
        if len(specs) == len(local) and digest else None
    hit = project_cache.load(name) if name else None
    if hit is not None:
        trust.check_paths(hit.paths, workspace)  # symlinks may have changed since
        rp = hit.policy
    else:
        rp, paths = _compile(t.project, answer, local, quick, workspace)
        if name:
            project_cache.store(name, project_cache.Compiled(rp, paths))
    return ProjectPolicy(rp, digest, bool(info.get("require_server")), offline)


def _compile(project: str, answer: dict[str, Any], local: Sequence[LoadedPolicy | str],
             quick: QuickPolicy | None, workspace: str | None
             ) -> tuple[ResolvedPolicy, list[trust.PathSetting]]:
    from corral.policy import PolicyError
    from corral.policy.compose import compose
    from corral.policy.load import load_policy
    from corral.runtime import trust

    try:
        loaded = [load_policy(x) if isinstance(x, str) else x for x in local]
    except PolicyError as err:
        raise _fail("; ".join(err.problems)) from None
    server = _load_server(project, answer)
    server = trust.check_server(server, workspace)
    trust.check_narrows(server, loaded, quick, workspace)
    try:
        rp = compose([*server, *loaded, *([quick] if quick is not None else [])],
                     workspace=Path(os.path.abspath(workspace)) if workspace else None)
    except PolicyError as err:
        raise _fail("; ".join(err.problems)) from None
    return rp, trust.server_paths(server)
