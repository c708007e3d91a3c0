"""What a sandbox is made of: the launcher's input, plain data with no behaviour.

Invariants: a ``SandboxSpec`` is complete before any resource is created (validation happens in
``workspace.validate`` and ``preflight`` first), so a bad spec never leaves anything behind.
Paths are absolute host paths; ``extra_files`` keys are absolute paths inside the sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from corral.policy.types import FilesConfig, Limits

__all__ = ["SandboxSpec"]


@dataclass(frozen=True)
class SandboxSpec:
    """Everything needed to build one sandbox.

    ``workspace``/``home`` of ``None`` mean a fresh ephemeral directory deleted after the run.
    ``proxy_port``/``dns_port`` are ports of listeners the proxy creates inside the sandbox netns
    (via ``Sandbox.run_in_netns``); TCP 80/443 and DNS of the sandbox user are redirected there.
    ``extra_files`` are read-only files placed at absolute paths inside (CA bundle, resolv.conf).
    """

    policies: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    files: FilesConfig = field(default_factory=FilesConfig)
    workspace: Path | None = None
    home: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    extra_files: dict[str, bytes] = field(default_factory=dict)
    proxy_port: int | None = None
    dns_port: int | None = None
    tmp_size: int = 1024**3
