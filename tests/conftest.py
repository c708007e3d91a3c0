"""Shared fixtures. Privileged tests must not silently skip in CI: see ``require``."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import subprocess
from collections.abc import Iterator

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip when a prerequisite is missing locally; fail when it is missing in CI."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but the test needs {what}", pytrace=False)
    pytest.skip(f"needs {what}")


def require_root() -> None:
    require(os.geteuid() == 0, "root")


def require_tools(*tools: str) -> None:
    for tool in tools:
        require(shutil.which(tool) is not None or os.path.exists(f"/usr/sbin/{tool}"), tool)


@contextlib.contextmanager
def free_subnet(net: str) -> Iterator[int]:
    """An N such that no interface of this host has an address in ``NET.N.0/24``, kept from
    other test processes until the block ends: give the host end its address inside it.
    (Random picks collided: two namespaces on one /30 each, and a test reached the other's
    server, whose CA has the same name: "certificate signature failure".)"""
    with open("/run/corral-test-subnets.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True,
                               text=True, check=True).stdout
        used = {int(addr.split(".")[2]) for addr in shown.split()
                if addr.startswith(f"{net}.") and addr.count(".") == 3}
        free = [n for n in range(1, 251) if n not in used]
        assert free, f"no free {net}.N.0/24 on this host"
        yield random.choice(free)


@pytest.fixture
def corral_env(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point corral's state and config dirs at fresh temporary dirs."""
    state = tmp_path / "state"  # type: ignore[operator]
    config = tmp_path / "config"  # type: ignore[operator]
    config.mkdir()
    monkeypatch.setenv("CORRAL_HOME", str(state))
    monkeypatch.setenv("CORRAL_CONFIG", str(config))
    return {"CORRAL_HOME": str(state), "CORRAL_CONFIG": str(config)}


@pytest.fixture(scope="session", autouse=True)
def _stop_proxy_zygotes() -> Iterator[None]:
    """Nothing the suite started keeps running after it: ``corral run -p`` starts a proxy
    zygote (corral/runtime/zygote.py) in the background; the ones this session's launchers
    started carry its tag (other sessions' and benchmarks' zygotes are left alone)."""
    from corral.runtime import zygote

    tag = f"pytest-{os.getpid()}"
    os.environ["CORRAL_ZYGOTE_TAG"] = tag
    yield
    for pid in zygote.running(tag):
        zygote.stop(pid)
