"""An agent-like program: the kind of things a coding agent does, run inside a corral sandbox.

Stdlib only (it runs on the sandbox's /usr/bin/python3). Each step prints what it tried and
what happened, so the demo shows which protections held.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

API = os.environ.get("DEMO_API", "https://10.250.77.2:8443")
INDEX = os.environ.get("DEMO_INDEX", "")
OK, NO = "\033[32mallowed\033[0m", "\033[31mblocked\033[0m"


def step(title: str, outcome: str, detail: str) -> None:
    print(f"  {outcome}  {title:<44} {detail}", flush=True)


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return resp.status, resp.read(4000).decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read(4000).decode(errors="replace")
    except urllib.error.URLError as err:  # a refused CONNECT surfaces here, body unread
        return 0, str(err.reason)


def main() -> int:
    print(f"agent: uid={os.getuid()} cwd={os.getcwd()} python={sys.executable}")
    token = os.environ.get("DEMO_API_TOKEN", "")
    print(f"agent: DEMO_API_TOKEN in my environment = {token!r}")

    with open("notes.md", "w") as fh:
        fh.write("# work done by the agent\n")
    subprocess.run(["git", "init", "-q"], check=True)
    step("write ./notes.md and git init", OK, "workspace is writable")

    for path in ("/etc/passwd", "/usr/local/bin/evil"):
        try:
            with open(path, "a") as fh:
                fh.write("x")
            step(f"write {path}", OK, "!! unexpected")
        except OSError as err:
            step(f"write {path}", NO, err.strerror or str(err))
    try:
        open("/etc/shadow").read()
        step("read /etc/shadow", OK, "!! unexpected")
    except OSError as err:
        step("read /etc/shadow", NO, err.strerror or str(err))

    status, body = fetch(f"{API}/v1/models")
    seen = json.loads(body).get("authenticated") if status == 200 else body.strip()
    step("GET /v1/models (credential injected)", OK if status == 200 else NO,
         f"HTTP {status}, server authenticated us: {seen}")

    status, body = fetch(f"{API}/admin/users")
    step("GET /admin/users (denied by a rule)", OK if status == 200 else NO,
         f"HTTP {status}: {body.strip().splitlines()[0] if body.strip() else ''}")

    status, body = fetch("https://example.com/")
    step("GET https://example.com/ (no rule)", OK if status == 200 else NO,
         f"HTTP {status}: {body.strip().splitlines()[0] if body.strip() else ''}")

    if INDEX:
        status, _ = fetch(f"{INDEX.rstrip('/')}/six/")
        step("GET the package index (builtin:pypi)", OK if status == 200 else NO, f"HTTP {status}")

    try:
        socket.create_connection(("10.250.77.2", 8443), timeout=5).close()
        step("raw TCP to 10.250.77.2:8443 (no proxy)", OK, "!! unexpected")
    except OSError as err:
        step("raw TCP to 10.250.77.2:8443 (no proxy)", NO, err.strerror or str(err))
    try:
        socket.getaddrinfo("exfiltrate.example.net", 443)
        step("DNS lookup of exfiltrate.example.net", OK, "!! unexpected")
    except OSError as err:
        step("DNS lookup of exfiltrate.example.net", NO, str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
