"""The private-destination lists, including IPv6 forms that embed IPv4 addresses."""

from __future__ import annotations

import ipaddress

import pytest

from corral.proxy.destinations import blocked_reason


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "224.0.0.1", "198.18.0.5", "::1", "fe80::1", "fd00::1", "fd00:ec2::254",
        "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1",
        "64:ff9b::10.0.0.1", "64:ff9b:1::a9fe:a9fe", "2002:7f00:1::", "2002:a9fe:a9fe::1",
    ],
)
def test_private_refused(addr: str) -> None:
    assert blocked_reason(ipaddress.ip_address(addr)) is not None


@pytest.mark.parametrize(
    "addr",
    # Documentation ranges are public here on purpose: registries resolve into them.
    ["192.0.2.10", "198.51.100.7", "203.0.113.9", "2001:db8::1", "93.184.216.34",
     "2606:4700::1111", "64:ff9b::5db8:d822"],
)
def test_public_allowed(addr: str) -> None:
    assert blocked_reason(ipaddress.ip_address(addr)) is None
