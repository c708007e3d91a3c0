"""corral's own settings: ``config.yaml`` in ``corral.dirs.config_dir()`` (root-owned).

Keys (all optional)::

    upstream_proxy: http://proxy.corp.example:3128   # all egress leaves through this proxy
    project_allow_private: [10.20.0.0/16]   # private ranges a server's project policy may open

A command-line flag overrides the file. A bad file is one line naming ``file:line`` and the fix;
an absent file is no settings. The file is only read when it exists, so a run without one pays
no YAML import. ``Config`` is a named tuple, not a dataclass: ``corral run`` reads the settings
on every launch, and ``dataclasses`` (with ``inspect``, ``ast``, ``dis``, ``tokenize``) would
cost it ~10 ms.
"""

# No ``from __future__ import annotations``: a NamedTuple would compile a ForwardRef per field.

from pathlib import Path
from typing import NamedTuple

from corral.dirs import config_dir
from corral.errors import CorralError

__all__ = ["Config", "config_path", "load_config", "upstream_proxy"]

KEYS = ("upstream_proxy", "project_allow_private")


class Config(NamedTuple):
    upstream_proxy: str | None = None
    project_allow_private: tuple[str, ...] = ()


def config_path() -> Path:
    return config_dir() / "config.yaml"


def _check_upstream(value: str) -> str:
    """Raise ``ValueError`` unless ``value`` is an ``http://HOST:PORT`` proxy URL."""
    from urllib.parse import urlsplit

    from corral.policy.hosts import normalize_host

    try:
        parts = urlsplit(value if "://" in value else f"http://{value}")
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port or address in {value!r}") from None
    if parts.scheme != "http" or not parts.hostname or normalize_host(parts.hostname) is None:
        raise ValueError(f"must be http://HOST:PORT, got {value!r}")
    if port is None or port == 0:  # no default: a proxy on port 80 is rare, a typo is not
        raise ValueError(f"needs a port (http://HOST:PORT), got {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or any(
            c.isspace() for c in value):
        raise ValueError(f"must be http://HOST:PORT with nothing after the port, got {value!r}")
    return value


def load_config(path: Path | None = None, *, exit_code: int = 2) -> Config:
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Config()
    except OSError as err:
        raise CorralError(f"{path}: cannot read: {err.strerror}", exit_code=exit_code) from None
    from corral.policy.yamlsrc import parse_yaml

    try:
        data, lines = parse_yaml(text)
    except ValueError as err:
        line, _where, message = str(err).split("|", 2)
        raise CorralError(f"{path}:{line}: {message}", exit_code=exit_code) from None
    if data is None:
        return Config()
    if not isinstance(data, dict):
        raise CorralError(f"{path}:1: expected a mapping of settings ({', '.join(KEYS)})",
                          exit_code=exit_code)
    for key in data:
        if key not in KEYS:
            raise CorralError(f"{path}:{lines.get((key,), 1)}: unknown setting {key!r} "
                              f"(known: {', '.join(KEYS)})", exit_code=exit_code)
    upstream = data.get("upstream_proxy")
    if upstream is not None:
        where = f"{path}:{lines.get(('upstream_proxy',), 1)}"
        if not isinstance(upstream, str):
            raise CorralError(f"{where}: upstream_proxy must be a URL like "
                              "http://proxy.example:3128", exit_code=exit_code)
        try:
            _check_upstream(upstream)
        except ValueError as err:
            raise CorralError(f"{where}: upstream_proxy {err}", exit_code=exit_code) from None
    return Config(upstream_proxy=upstream,
                  project_allow_private=_ranges(data, lines, path, exit_code))


def _ranges(data: dict[str, object], lines: dict[tuple[str | int, ...], int], path: Path,
            exit_code: int) -> tuple[str, ...]:
    """``project_allow_private``: a list of CIDRs (``ip_network`` accepts each)."""
    import ipaddress

    value = data.get("project_allow_private")
    if value is None:
        return ()
    where = f"{path}:{lines.get(('project_allow_private',), 1)}"
    if not isinstance(value, list):
        raise CorralError(f"{where}: project_allow_private must be a list of CIDRs like "
                          "[10.20.0.0/16]", exit_code=exit_code)
    for item in value:
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError as err:
            raise CorralError(f"{where}: project_allow_private: {err}",
                              exit_code=exit_code) from None
    return tuple(str(item) for item in value)


def upstream_proxy(flag: str | None, *, exit_code: int = 2) -> str | None:
    """The upstream proxy: the flag if given (validated), else the config file's."""
    if flag is not None:
        try:
            return _check_upstream(flag)
        except ValueError as err:
            raise CorralError(f"--upstream-proxy {err}", exit_code=exit_code) from None
    return load_config(exit_code=exit_code).upstream_proxy
