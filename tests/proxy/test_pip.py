"""The one test that reaches the real package registry: ``pip download`` through the proxy.

The registry's addresses are read from pip itself at run time (never written in this repo).
They resolve to a documentation-range address here, which the destination checks must allow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .conftest import RunningProxy


def _pip_index() -> tuple[str, str]:
    from pip._internal.models.index import PyPI

    return PyPI.simple_url, PyPI.file_storage_domain


@pytest.mark.timeout(240)
def test_pip_download_through_proxy(make_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    index_url, files_host = _pip_index()
    index_host = urlsplit(index_url).hostname
    proxy: RunningProxy = make_proxy(
        f"name: registry\negress:\n"
        f"  - {{host: {index_host}, ports: [443], action: inspect, methods: [GET]}}\n"
        f"  - {{host: {files_host}, ports: [443], action: direct}}\n",
        overrides={},
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--isolated", "--no-deps", "--only-binary=:all:",
         "--no-cache-dir", "--index-url", index_url, "--proxy", proxy.url,
         "--cert", str(proxy.bundle), "-d", str(tmp_path / "dl"), "six"],
        env=env, capture_output=True, text=True, timeout=200,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert list((tmp_path / "dl").glob("six-*.whl"))
    assert proxy.sink.of("proxy.inspect", host=index_host, method="GET", status=200)
    assert proxy.sink.of("proxy.allow", host=files_host, mode="direct")
    # The same download is refused when the policy does not name the registry.
    denied = make_proxy("name: none\negress: []\n", overrides={})
    refused = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--isolated", "--no-deps", "--no-cache-dir",
         "--retries", "0", "--index-url", index_url, "--proxy", denied.url,
         "--cert", str(denied.bundle), "-d", str(tmp_path / "dl2"), "six"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert refused.returncode != 0
    assert denied.sink.of("proxy.deny", host=index_host)
