"""The nft batch is valid for nft itself (checked with ``nft -c``) in each configuration."""

from __future__ import annotations

import subprocess

import pytest
from conftest import require_root, require_tools

from corral.sandbox.netfilter import ruleset


@pytest.mark.parametrize(("proxy", "dns"), [(None, None), (15001, None), (None, 15053),
                                            (15001, 15053)])
def test_ruleset_is_accepted_by_nft(proxy: int | None, dns: int | None) -> None:
    require_root()
    require_tools("nft", "unshare")
    text = ruleset(2_000_000_123, proxy, dns)
    done = subprocess.run(["unshare", "-n", "nft", "-c", "-f", "-"], input=text, text=True,
                          capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert ("redirect to :15001" in text) == (proxy is not None)
    assert ("redirect to :15053" in text) == (dns is not None)
    assert "policy drop" in text and "skuid 2000000123" in text
