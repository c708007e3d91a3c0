"""The fake LLM provider (``fake_provider.py``) served over TLS in a test network namespace,
shared by the SDK recipe tests, the spend tests and the server's launcher and relay tests;
and the official SDKs copied into a workspace for the system python inside a sandbox."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_subnet, require_root, require_tools
from tests.tlsutil import make_ca


@dataclass
class Provider:
    ip: str
    ca: Path
    keys: dict[str, str]  # the real keys it accepts, by provider
    log: subprocess.Popen[str]  # one JSON line per request on its stdout
    hold: Path  # streams stop after their first event until this file exists (if held)


@contextmanager
def serve(tmp: Path, *, net: str = "10.252", prefix: str = "s",
          hold: bool = False) -> Iterator[Provider]:
    """The provider in a fresh namespace on ``net``.X.2:443 (``prefix``: names apart from
    other fixtures running at once)."""
    require_root()
    require_tools("ip", "bwrap", "nft", "setpriv")
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o755)
    tag = secrets.token_hex(3)
    ns, veth_h, veth_n = f"corral-{prefix}-{tag}", f"cr{prefix}{tag}h", f"cr{prefix}{tag}n"
    keys = {"anthropic": "sk-ant-REAL-" + secrets.token_hex(8),
            "openai": "sk-REAL-" + secrets.token_hex(8)}
    release = tmp / "release"
    proc = None

    def sh(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True)

    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth_h, "type", "veth", "peer", "name", veth_n)
        sh("ip", "link", "set", veth_n, "netns", ns)
        with free_subnet(net) as octet:
            host_ip, ip = f"{net}.{octet}.1", f"{net}.{octet}.2"
            sh("ip", "addr", "add", f"{host_ip}/30", "dev", veth_h)
        ca, cert, key = make_ca(tmp, [ip])
        sh("ip", "link", "set", veth_h, "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", veth_n)
        sh("ip", "-n", ns, "link", "set", veth_n, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        env = {**os.environ, "FAKE_ANTHROPIC_KEY": keys["anthropic"],
               "FAKE_OPENAI_KEY": keys["openai"]}
        if hold:
            env["FAKE_HOLD_FILE"] = str(release)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-u",
             str(Path(__file__).with_name("fake_provider.py")), str(cert), str(key), "443"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection((ip, 443), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        yield Provider(ip, ca, keys, proc, release)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "link", "del", veth_h], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Provider]:
    """The provider with its streams held until ``provider.hold`` exists."""
    with serve(tmp_path / "provider", hold=True) as got:
        yield got


def sdk_into(lib: Path, sdks: Sequence[str] = ("anthropic",)) -> None:
    """The SDKs and what they import, copied for the system python 3.11 inside the sandbox (a
    project policy may name files inside the workspace only: a run by root has no home)."""
    probe = (f"import sys, importlib\nfor sdk in {list(sdks)!r}: importlib.import_module(sdk)\n"
             "if 'anthropic' in sys.modules:\n"
             "    import anthropic, anthropic.lib.streaming\n"
             "    anthropic.Anthropic(api_key='x', base_url='https://127.0.0.1:9')\n"
             "if 'openai' in sys.modules:\n"
             "    import openai\n"
             "    openai.OpenAI(api_key='x', base_url='https://127.0.0.1:9').chat.completions\n"
             "for name in ('httpcore', 'h11', 'certifi', 'anyio', 'sniffio', 'idna', 'jiter',"
             " 'distro', 'docstring_parser', 'typing_inspection', 'tqdm', 'pydantic',"
             " 'pydantic_core', 'annotated_types', 'typing_extensions'):\n"
             "    try: importlib.import_module(name)\n"
             "    except ImportError: pass\n"
             "print('\\n'.join(m.__file__ for m in list(sys.modules.values())"
             " if getattr(m, '__file__', None)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    site = next(p for p in sys.path if p.endswith("site-packages"))
    tops = {Path(f).relative_to(site).parts[0] for f in out.split()
            if f.startswith(site + os.sep)}
    for top in tops:
        src = Path(site, top)
        if (lib / top).exists():
            continue
        if src.is_dir():
            shutil.copytree(src, lib / top, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, lib / top)
