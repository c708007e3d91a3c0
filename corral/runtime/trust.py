"""The trust rules for a policy that came from ``corral server`` (PLATFORM.md "Policies from the
server are not trusted like local config"), and the rule that local input only narrows it.

A project policy is treated like a policy passed by path, and less: whoever controls the
server (or its database) must not be able to make a launcher read root's files, run commands,
or reach this host's private network.

Invariants (each refusal is a ``CorralError`` 125 naming the rule's ``file:line``):
- no ``env:``/``file:``/``cmd:`` secret source (the loader refuses them for an untrusted
  policy; checked again here on the loaded bindings);
- ``files.read``, ``files.home`` and ``files.workspace`` name only paths inside the invoking
  user's home (never root's: a run by root has no home exemption) or inside the workspace,
  judged after ``~`` expansion, ``..`` and symlinks;
- ``tls_ca`` is inline PEM, written to a root-only file named by its SHA-256; a path is refused;
- ``allow_private``, and a rule for a non-global IP literal (which reaches that address), only
  for an IP literal inside a range the host's own ``config.yaml`` lists under
  ``project_allow_private``;
- local input (``-p`` files, quick flags, ``--workspace``) may add deny rules, hidden paths and
  stricter limits, modes and approvals; a rule that allows, a credential, a readable or
  writable path, an exec allow-list entry, another workspace or home widens and is refused.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral import dirs
from corral._digest import sha256
from corral.errors import CorralError

if TYPE_CHECKING:
    from corral.policy.load import LoadedPolicy
    from corral.policy.quick import QuickPolicy
    from corral.policy.types import Rule

__all__ = ["PathSetting", "check_narrows", "check_paths", "check_server", "private_ranges",
           "server_paths"]

EXIT_CORRAL = 125


def _refuse(message: str) -> CorralError:
    return CorralError(f"refused the project's policy: {message}", exit_code=EXIT_CORRAL)


def _widens(message: str) -> CorralError:
    return CorralError(f"--project: local input may only narrow the project's policy; {message} "
                       "widens it", exit_code=EXIT_CORRAL)


def private_ranges() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``project_allow_private`` of the host's config.yaml (empty when absent)."""
    from corral.runtime.config import load_config

    return [ipaddress.ip_network(c, strict=False)
            for c in load_config(exit_code=EXIT_CORRAL).project_allow_private]


def _inside(path: Path, roots: list[Path]) -> bool:
    text = os.path.normpath(str(path))
    real = os.path.realpath(path)  # not of ``text``: 'link/..' is the link's parent
    # both as written (after ``..``) and as the sandbox will bind it (symlinks followed)
    return all(any(os.path.commonpath([p, str(r)]) == str(r) for r in roots)
               for p in (text, real))


def _roots(workspace: str | None, policy_ws: Path | None) -> list[Path]:
    from corral.sandbox import expand_user, invoking_user

    uid, _gid, home = invoking_user()
    roots = [] if uid == 0 else [Path(os.path.realpath(home))]
    for ws in (Path(workspace) if workspace else None, policy_ws):
        if ws is not None:
            roots.append(Path(os.path.realpath(expand_user(ws).absolute())))
    return roots


PathSetting = tuple[str, str, str]  # (key, value as written, origin): plain data, cacheable


def server_paths(server: list[LoadedPolicy]) -> list[PathSetting]:
    """The host paths the server's policies name (``files.workspace``, ``files.home``,
    ``files.read``), for ``check_paths``; the cached compiled policy keeps these, since what a
    path resolves to can change between runs (a symlink made by an earlier run's agent)."""
    out: list[PathSetting] = []
    for pol in server:
        for key in ("files.workspace", "files.home"):
            if key in pol.settings:
                value, origin = pol.settings[key]
                out.append((key, str(value), str(origin)))
        out += [("files.read", str(v), str(o)) for v, o in pol.lists.get("files.read", ())]
    return out


def check_paths(paths: list[PathSetting], workspace: str | None) -> None:
    """Each named path inside the invoking user's home or the workspace, as written and after
    symlinks, judged now (on every run, cached policy or not)."""
    from corral.sandbox import expand_user, invoking_user

    _uid, _gid, home = invoking_user()
    homes = _roots(None, None)
    ws_setting = next((Path(v) for k, v, _o in paths if k == "files.workspace"), None)
    roots = _roots(workspace, ws_setting)
    for key, value, origin in paths:
        if key != "files.read":
            if not _inside(expand_user(Path(value)), homes):
                raise _refuse(f"{origin}: {key}: {value} is outside the invoking user's "
                              f"home ({home if homes else 'none: run by root'})")
        elif not _inside(expand_user(Path(value)), roots):
            raise _refuse(f"{origin}: files.read: {value} is outside the invoking user's "
                          "home and the workspace")


def _pem_file(pem: str) -> Path:
    folder = dirs.ensure_state_dir() / "projects" / "ca"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{sha256(pem.encode()).hexdigest()}.pem"
    if not path.exists():
        tmp = folder / f".{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(pem)
        os.replace(tmp, path)
    return path


def _check_rule(rule: Rule, ranges: list[Any]) -> Rule:
    try:
        addr: Any = ipaddress.ip_address(rule.host.strip("[]"))
    except ValueError:
        addr = None
    # an IP-literal rule reaches that address even when private (the proxy's rule), so a
    # private literal is held to the same ranges as allow_private
    # a platform rule is dialled by the server's relay, under the server's relay.allow_private
    if rule.action != "platform" and (rule.allow_private or (addr is not None and
                                                             not addr.is_global)):
        what = "allow_private" if rule.allow_private else "a private address"
        if addr is None:
            raise _refuse(f"{rule.origin}: allow_private on {rule.host}: only an IP address "
                          "inside the host's project_allow_private ranges may be private")
        if not any(addr in net for net in ranges):
            raise _refuse(f"{rule.origin}: {what} {rule.host}: not in this host's "
                          f"project_allow_private ({', '.join(map(str, ranges)) or 'none'}; "
                          f"{dirs.config_dir() / 'config.yaml'})")
    raw_ca = rule.tls_ca
    if raw_ca is not None:
        if not isinstance(raw_ca, str):
            raise _refuse(f"{rule.origin}: tls_ca: a project policy gives the CA inline (PEM), "
                          "not a path on this host")
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            certs = x509.load_pem_x509_certificates(raw_ca.encode())
        except ValueError as err:
            raise _refuse(f"{rule.origin}: tls_ca: not a PEM certificate ({err})") from None
        # only the certificates, re-encoded: text around them never reaches the proxy
        pem = "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)
        return rule._replace(tls_ca=_pem_file(pem))
    return rule


def check_server(server: list[LoadedPolicy], workspace: str | None) -> list[LoadedPolicy]:
    """The server's policies held to the trust rules; inline CAs replaced by root-only files."""
    import dataclasses  # here: a cache hit of the launch path never needs it (~8 ms)

    for pol in server:
        for binding in pol.credentials.values():
            for src in (binding.secret, binding.aws_access_key_id,
                        binding.aws_secret_access_key, binding.aws_session_token):
                if src is not None and not src.startswith(("store:", "server:")):
                    raise _refuse(f"{binding.origin}: credentials.{binding.name}: "
                                  f"{src.split(':', 1)[0]}: secret sources are refused")
    check_paths(server_paths(server), workspace)
    ranges = private_ranges()
    out = []
    for pol in server:
        rules = tuple(_check_rule(r, ranges) for r in pol.rules)
        out.append(dataclasses.replace(pol, rules=rules))
    return out


def check_narrows(server: list[LoadedPolicy], local: list[LoadedPolicy],
                  quick: QuickPolicy | None, workspace: str | None) -> None:
    """Refuse local input that would widen the project's policy, naming it."""
    pols: list[LoadedPolicy | QuickPolicy] = [*local, *([quick] if quick is not None else [])]
    for pol in pols:
        for rule in pol.rules:
            if rule.action != "deny":
                raise _widens(f"{rule.origin}: an egress rule for {rule.host} ({rule.action})")
        for name, binding in pol.credentials.items():
            raise _widens(f"{binding.origin}: credentials.{name}")
        for key in ("files.read", "files.write", "exec.allow"):
            for value, origin in pol.lists.get(key, ()):
                raise _widens(f"{origin}: {key}: {value}")
        for key in ("files.workspace", "files.home"):
            if key in pol.settings:
                value, origin = pol.settings[key]
                theirs = [p.settings[key][0] for p in server if key in p.settings]
                if theirs[:1] != [value]:
                    raise _widens(f"{origin}: {key}: {value}")
    theirs_ws = [p.settings["files.workspace"][0] for p in server
                 if "files.workspace" in p.settings]
    if workspace and theirs_ws and Path(os.path.abspath(workspace)) != Path(theirs_ws[0]):
        raise _widens(f"--workspace {workspace} (the project's files.workspace is "
                      f"{theirs_ws[0]})")
