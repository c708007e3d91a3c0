"""``corral run`` as a user meets it: bad input, the environment inside, workspaces and homes,
``sandbox list``/``gc`` after a launcher is SIGKILLed, and 30 sandboxes at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import require_root, require_tools

pytestmark = pytest.mark.root


@pytest.fixture
def env(corral_env: dict[str, str]) -> dict[str, str]:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv", "git")
    return {**os.environ, **corral_env}


def corral(env: dict[str, str], *args: str, input: bytes | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-m", "corral", *args], env=env, timeout=timeout,
                              capture_output=True, text=True, check=False,
                              input=input.decode() if input is not None else None)
    except subprocess.TimeoutExpired:  # the launcher was SIGKILLed: collect its leftovers
        subprocess.run([sys.executable, "-m", "corral", "sandbox", "gc"], env=env,
                       capture_output=True, check=False)
        raise


def _registry(env: dict[str, str]) -> list[str]:
    reg = Path(env["CORRAL_HOME"]) / "sandboxes"
    return sorted(p.name for p in reg.iterdir() if p.name != ".lock") if reg.exists() else []


BAD = {
    "no-command": [],
    "empty-after-dashes": ["--"],
    "missing-workspace": ["--workspace", "/nonexistent/ws", "--", "true"],
    "workspace-in-state-dir": ["--workspace", "{state}", "--", "true"],
    "workspace-in-etc-ssh-host-key-dir-hidden": ["--workspace", "/run", "--", "true"],
    "bad-policy-file": ["-p", "{bad_policy}", "--", "true"],
    "missing-policy": ["-p", "/nonexistent/policy.yaml", "--", "true"],
    "unknown-builtin": ["-p", "builtin:no-such-policy", "--", "true"],
    "bad-env": ["--env", "NOEQUALS", "--", "true"],
    "reserved-env": ["--env", "PATH=/evil", "--", "true"],
    "unknown-flag": ["--frobnicate", "--", "true"],
    "same-workspace-and-home": ["--workspace", "{tmp}", "--home", "{tmp}", "--", "true"],
    # the agent would get write access to host files: system trees, shared dirs, all homes
    "workspace-root": ["--workspace", "/", "--", "true"],
    "workspace-etc": ["--workspace", "/etc", "--", "true"],
    "workspace-usr-subdir": ["--workspace", "/usr/share", "--", "true"],
    "workspace-contains-state": ["--workspace", "{state_parent}", "--", "true"],
    "workspace-shared-tmp": ["--workspace", "/tmp", "--", "true"],
    "workspace-all-homes": ["--workspace", "/home", "--", "true"],
    "home-system-dir": ["--home", "/var/lib", "--", "true"],
    "read-covers-root": ["-p", "{read_root_policy}", "--", "true"],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_125_and_creates_nothing(env, tmp_path: Path, case: str) -> None:
    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text("name: Bad Name\negress: [{host: x, action: fly}]\n")
    Path(env["CORRAL_HOME"]).mkdir(parents=True, exist_ok=True)
    state = Path(env["CORRAL_HOME"]) / "ws"
    state.mkdir()
    read_root = tmp_path / "read-root.yaml"
    read_root.write_text("name: read-root\nfiles: {read: [/]}\n")
    args = [a.format(state=state, bad_policy=bad_policy, tmp=tmp_path,
                     state_parent=Path(env["CORRAL_HOME"]).parent, read_root_policy=read_root)
            for a in BAD[case]]
    done = corral(env, "run", *args)
    assert done.returncode == 125, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("corral: "), done.stderr
    assert "Traceback" not in done.stderr
    assert _registry(env) == []


def test_refuses_without_root(env) -> None:
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-m", "corral", "run", "--", "true"],
                          env={**env, "CORRAL_HOME": "/nonexistent/state"},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 125
    assert done.stderr.strip() == ("corral: corral run needs root (it creates namespaces, "
                                   "netfilter rules and cgroups)")


def test_environment_inside(env) -> None:
    env = {**env, "HOST_SECRET": "must-not-leak"}
    script = ("echo cwd=$(pwd); echo path=$PATH; echo user=$(id -un); echo home=$HOME; "
              "echo foo=$FOO; env | grep -c HOST_SECRET; "
              "python3 -c 'print(\"py-ok\")'; git --version >/dev/null && echo git-ok; "
              "curl --version >/dev/null && echo curl-ok; node -e 'console.log(\"node-ok\")'")
    done = corral(env, "run", "--env", "FOO=bar baz", "--", "sh", "-c", script)
    out = done.stdout.splitlines()
    assert out[:5] == ["cwd=/workspace",
                       "path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "user=corral", "home=/home/corral", "foo=bar baz"], done
    assert out[5:] == ["0", "py-ok", "git-ok", "curl-ok", "node-ok"], done


def test_existing_repo_is_mapped_to_its_owner(env, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.txt").write_text("a\n")
    for p in [repo, *repo.rglob("*")]:
        os.lchown(p, 1000, 1000)
    script = "git status --short && echo new > b.txt && mkdir d && touch d/c && ls -ln a.txt"
    done = corral(env, "run", "--workspace", str(repo), "--", "sh", "-c", script)
    assert done.returncode == 0, done
    assert "?? a.txt" in done.stdout  # git works: no "dubious ownership"
    uid = done.stdout.splitlines()[-1].split()[2]
    assert int(uid) >= 2_000_000_000  # the owner's files are the sandbox user's inside
    for name in ("b.txt", "d", "d/c"):
        st = (repo / name).stat()
        assert (st.st_uid, st.st_gid) == (1000, 1000), name  # ... and land as the owner's


def test_ephemeral_workspace_removed_home_persists(env, tmp_path: Path) -> None:
    home = tmp_path / "agent-home"
    home.mkdir()  # --home never creates a host path (only a bare NAME under the homes dir)
    first = corral(env, "run", "--home", str(home), "--", "sh", "-c",
                   "echo remembered > ~/note; echo scratch > /workspace/x; echo $HOME")
    assert first.returncode == 0, first
    second = corral(env, "run", "--home", str(home), "--", "sh", "-c",
                    "cat ~/note; ls /workspace | wc -l")
    assert second.stdout.split() == ["remembered", "0"]
    assert (home / "note").read_text() == "remembered\n"
    assert _registry(env) == []


def test_sandbox_list_and_gc_after_sigkill(env) -> None:
    launcher = subprocess.Popen([sys.executable, "-m", "corral", "run", "--", "sh", "-c",
                                 "echo up; sleep 60"], env=env, stdout=subprocess.PIPE, text=True)
    assert launcher.stdout is not None and launcher.stdout.readline().strip() == "up"
    listed = corral(env, "sandbox", "list")
    assert "running" in listed.stdout and "(none)" in listed.stdout
    (sid,) = _registry(env)[:1]
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    time.sleep(0.3)
    assert "leftover" in corral(env, "sandbox", "list").stdout
    done = corral(env, "sandbox", "gc")
    assert done.returncode == 0, done
    assert "removed sandbox" in done.stdout
    assert _registry(env) == []
    from corral.sandbox.cgroups import list_corral_cgroups

    assert f"corral-{sid.removesuffix('.json')}" not in list_corral_cgroups()
    assert corral(env, "sandbox", "gc").stdout.strip() == "nothing to collect"


def _live_netns() -> set[str]:
    seen = set()
    for pid in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            seen.add(os.readlink(f"/proc/{pid}/ns/net"))
    return seen


def test_thirty_sandboxes_at_once(env, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    policy = tmp_path / "gate.yaml"
    policy.write_text(f"name: load\nfiles: {{read: [{gate}]}}\n")
    # every sandbox waits at the gate, so all 30 exist at once before any finishes
    work = (f"while [ ! -e {gate}/go ]; do sleep 0.05; done; "
            "python3 -c 'import hashlib; h=hashlib.sha256(); [h.update(b\"x\"*4096) "
            "for _ in range(2000)]; print(h.hexdigest()[:8])' && echo $(id -u) > /workspace/u "
            "&& readlink /proc/self/ns/net && hostname && cat /workspace/u")

    def one(_: int) -> subprocess.CompletedProcess[str]:
        return corral(env, "run", "-p", str(policy), "--", "sh", "-c", work, timeout=120)

    with ThreadPoolExecutor(max_workers=30) as pool:
        futures = [pool.submit(one, i) for i in range(30)]
        try:
            deadline = time.monotonic() + 90
            while len(_registry(env)) < 60 and time.monotonic() < deadline:  # 30 x (dir, json)
                time.sleep(0.1)
            assert len(_registry(env)) == 60
            assert corral(env, "sandbox", "list").stdout.count("running") == 30
        finally:
            (gate / "go").touch()  # let them finish (and tear down) whatever happened above
        results = [f.result() for f in futures]
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    uids = {r.stdout.split()[-1] for r in results}
    assert len(uids) == 30  # every sandbox had its own uid
    assert _registry(env) == []
    reg = Path(env["CORRAL_HOME"]) / "sandboxes"
    assert [p.name for p in reg.iterdir()] == [".lock"]
    sandbox_ns = {r.stdout.split()[-3] for r in results}
    assert len(sandbox_ns) == 30 and all(n.startswith("net:[") for n in sandbox_ns)
    assert not sandbox_ns & _live_netns()  # every sandbox's network namespace is gone
    from corral.sandbox.cgroups import list_corral_cgroups

    names = set(list_corral_cgroups())
    hostnames = {r.stdout.split()[-2] for r in results}
    assert len(hostnames) == 30 and all(h.startswith("corral-") for h in hostnames)
    assert not hostnames & names  # every sandbox's cgroup is gone
    host_tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    assert "corral" not in host_tables.stdout


def test_policy_with_egress_rules_brings_the_proxy(env, tmp_path: Path) -> None:
    """Allowed requests leave through the proxy; others get its 403; bypassing it reaches
    nothing. The "outside" server listens on host loopback 127.0.0.2 (not the agent's)."""
    require_tools("curl")
    (tmp_path / "index.html").write_text("hello-from-host\n")
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.2"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split(" port ")[1].split()[0])
        policy = tmp_path / "egress.yaml"
        policy.write_text(f"name: egress\negress:\n  - host: 127.0.0.2\n    ports: [{port}]\n"
                          "    action: direct\n    allow_private: true\n")
        script = (f"curl -s -m 5 http://127.0.0.2:{port}/index.html; "
                  f"curl -s -m 5 -o /dev/null -w '%{{http_code}}\\n' http://127.0.0.2:{port + 1}/; "
                  f"curl -s -m 5 --noproxy '*' http://127.0.0.2:{port}/ || echo bypass-failed")
        done = corral(env, "run", "-p", str(policy), "--", "sh", "-c", script)
        assert done.returncode == 0, done
        assert done.stdout.splitlines() == ["hello-from-host", "403", "bypass-failed"], done
    finally:
        server.kill()
        server.wait()
    assert _registry(env) == []


def test_root_owned_workspace_refused_under_sudo(env, tmp_path: Path) -> None:
    ws = tmp_path / "root-owned"
    ws.mkdir()  # owned by root; the invoking user (SUDO_UID) is someone else
    done = corral({**env, "SUDO_UID": "1000", "SUDO_GID": "1000"}, "run", "--workspace",
                  str(ws), "--", "true")
    assert done.returncode == 125
    assert "belongs to root, not to you" in done.stderr
    os.chown(ws, 1000, 1000)  # control: the user's own directory is fine
    ok = corral({**env, "SUDO_UID": "1000", "SUDO_GID": "1000"}, "run", "--workspace",
                str(ws), "--", "true")
    assert ok.returncode == 0, ok
