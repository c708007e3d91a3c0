"""What a sandbox is made of: the launcher's input, plain data with no behaviour.

Invariants: a ``SandboxSpec`` is complete before any resource is created (validation happens in
``workspace.validate`` and ``preflight.check_host`` first), so a bad spec never leaves anything
behind.
Paths are absolute host paths; ``extra_files`` keys are absolute paths inside the sandbox. A
spec is immutable (a named tuple whose mappings are read-only by type; the empty defaults are
read-only proxies): derive a changed one with ``spec._replace(...)``. It is not a dataclass so
that ``corral run`` never loads ``dataclasses``.
"""

# No ``from __future__ import annotations``: a NamedTuple would compile a ForwardRef per field,
# on every launch (docs/benchmarks.md, "Launch-path choices").

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from corral.policy.settings import FilesConfig, Limits

__all__ = ["SandboxSpec"]

_NO_ENV: Mapping[str, str] = MappingProxyType({})
_NO_FILES: Mapping[str, bytes] = MappingProxyType({})


class SandboxSpec(NamedTuple):
    """Everything needed to build one sandbox.

    ``workspace``/``home`` of ``None`` mean a fresh ephemeral directory deleted after the run.
    ``proxy_port``/``dns_port`` are ports of listeners the proxy creates inside the sandbox netns
    (via ``Sandbox.run_in_netns``); TCP 80/443 and DNS of the sandbox user are redirected there.
    ``extra_files`` are read-only files placed at absolute paths inside (CA bundle, resolv.conf).
    ``refusal_log``: an NFLOG group the netns rules copy the sandbox user's refused packets to
    (``corral.runtime.attempts`` records them when there is no proxy).
    """

    policies: tuple[str, ...] = ()
    limits: Limits = Limits()
    files: FilesConfig = FilesConfig()
    workspace: Path | None = None
    home: Path | None = None
    env: Mapping[str, str] = _NO_ENV
    extra_files: Mapping[str, bytes] = _NO_FILES
    proxy_port: int | None = None
    dns_port: int | None = None
    tmp_size: int = 1024**3
    refusal_log: int | None = None
