"""Everything a proxy connection handler needs, in one object built once per sandbox.

Invariants:
- Secrets live only here (``secrets``), keyed by binding name; handlers pass them to
  ``inject`` and nowhere else.
- ``names`` is the DNS stub's synthetic-address table; the transparent handler maps captured
  destinations back to names through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.proxy.audit import NullAudit, RelayAudit
from corral.proxy.lookup import Resolver
from corral.proxy.names import SyntheticNames
from corral.proxy.tls import CertificateAuthority, UpstreamContexts
from corral.proxy.upstream import UpstreamProxy

__all__ = ["ProxyContext"]


@dataclass
class ProxyContext:
    policy: Any
    ca: CertificateAuthority
    secrets: Mapping[str, Mapping[str, str]]
    audit: NullAudit | RelayAudit = field(default_factory=NullAudit)
    resolver: Resolver = field(default_factory=Resolver)
    upstream_tls: UpstreamContexts = field(default_factory=UpstreamContexts)
    upstream_proxy: UpstreamProxy | None = None
    names: SyntheticNames = field(default_factory=SyntheticNames)
    idle_timeout: float = 300.0
    spend: Any = None  # corral.spend.Spend when a rule has ``meter:`` (proxy.metered)
    platform: Any = None  # proxy.platform.PlatformRelay when a rule says ``action: platform``
