"""Shared fixtures. Privileged tests must not silently skip in CI: see ``require``."""

from __future__ import annotations

import os
import shutil
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
