"""``--upstream-proxy`` and ``upstream_proxy`` in config.yaml: all egress of a real ``corral run``
leaves through a chained (corporate) proxy on loopback; bad values are one line naming
file:line. The corporate proxy is corral's own proxy (a real forward proxy) recording
what it carried."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_root, require_tools
from proxy.conftest import ListSink, Outside, start_proxy

from corral.runtime.config import load_config

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]


@pytest.fixture
def corporate(outside: Outside, tmp_path: Path, corral_env: dict[str, str],
              ) -> Iterator[tuple[str, ListSink]]:
    from corral.policy import resolve

    path = tmp_path / "corp.yaml"
    path.write_text(f"name: corp\negress:\n  - {{host: {outside.ip}, ports: [443],"
                    " action: direct, allow_private: true}\n")
    sink = ListSink()
    listener = socket.create_server(("127.0.0.1", 0))
    handle, _pem = start_proxy(resolve([str(path)], use_cache=False), [listener], audit=sink)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", sink
    finally:
        handle.stop()
        listener.close()


def _run(env: dict[str, Any], policy: Path, ip: str,
         *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", "run", "-p", str(policy), *flags, "--",
         "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"https://{ip}/echo"],
        env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("where", ["flag", "config"])
def test_egress_goes_through_the_upstream_proxy(corral_env: dict[str, str], outside: Outside,
                                                corporate: tuple[str, ListSink],
                                                tmp_path: Path, where: str) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv", "curl")
    url, sink = corporate
    env = {**os.environ, **corral_env}
    policy = tmp_path / "p.yaml"
    policy.write_text(f"name: p\negress:\n  - {{host: {outside.ip}, ports: [443], action: "
                      f"inspect, tls_ca: {outside.ca}, allow_private: true}}\n")
    flags: list[str] = []
    if where == "flag":
        flags = ["--upstream-proxy", url]
    else:
        conf = Path(corral_env["CORRAL_CONFIG"])
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "config.yaml").write_text(f"# corral settings\nupstream_proxy: {url}\n")
    done = _run(env, policy, outside.ip, *flags)
    assert done.returncode == 0 and done.stdout == "200", done
    assert sink.of("proxy.allow", host=outside.ip, mode="direct"), sink.events


def test_without_upstream_the_corporate_proxy_sees_nothing(
        corral_env: dict[str, str], outside: Outside, corporate: tuple[str, ListSink],
        tmp_path: Path) -> None:
    """Control: the assertion above fails when the setting is not applied."""
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv", "curl")
    _url, sink = corporate
    policy = tmp_path / "p.yaml"
    policy.write_text(f"name: p\negress:\n  - {{host: {outside.ip}, ports: [443], action: "
                      f"inspect, tls_ca: {outside.ca}, allow_private: true}}\n")
    done = _run({**os.environ, **corral_env}, policy, outside.ip)
    assert done.stdout == "200" and not sink.events


@pytest.mark.parametrize(("text", "line", "words"), [
    ("upstream_proxy: ftp://x:21\n", 1, "must be http://HOST:PORT"),
    ("# c\nupstream_proxy: http://x:notaport\n", 2, "bad port"),
    ("upstream_proxy: [a]\n", 1, "must be a URL"),
    ("\nupstream-proxy: http://x:3128\n", 2, "unknown setting"),
    ("upstream_proxy: [\n", 2, "YAML"),
])
def test_bad_config_is_one_line_with_file_and_line(corral_env: dict[str, str], tmp_path: Path,
                                                   text: str, line: int, words: str) -> None:
    conf = Path(corral_env["CORRAL_CONFIG"])
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "config.yaml").write_text(text)
    with pytest.raises(Exception) as err:
        load_config()
    assert str(err.value).startswith(f"{conf / 'config.yaml'}:{line}: ") and words in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_config_refuses_the_run(corral_env: dict[str, str], tmp_path: Path) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv")
    conf = Path(corral_env["CORRAL_CONFIG"])
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "config.yaml").write_text("upstream_proxy: ftp://x\n")
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\negress:\n  - {host: example.test, action: deny}\n")
    done = subprocess.run([sys.executable, "-m", "corral", "run", "-p", str(policy), "--",
                           "true"], env={**os.environ, **corral_env}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 125
    assert done.stderr.strip().splitlines() == [
        f"corral: {conf / 'config.yaml'}:1: upstream_proxy must be http://HOST:PORT, got "
        "'ftp://x'"]
    assert not (Path(corral_env["CORRAL_HOME"]) / "sandboxes").exists() or not [
        p for p in (Path(corral_env["CORRAL_HOME"]) / "sandboxes").iterdir() if p.name != ".lock"]


def test_mcp_flag_is_validated(corral_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "corral", "mcp", "--upstream-proxy", "ftp://x"],
                          env={**os.environ, **corral_env}, capture_output=True, text=True,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert done.stderr.strip() == "corral: --upstream-proxy must be http://HOST:PORT, got 'ftp://x'"
