"""Filesystem layer: hidden paths stay unreadable, nothing outside workspace/home/tmp is writable.

Each case probes from inside a sandbox and has a positive control: the same probe on the host
(showing the target exists and is readable/writable there), or the same probe against a
sibling the sandbox may reach. Files the tests place outside /tmp (under /opt, /etc, /root,
/home, /run) are removed by finalizers.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.policy.types import FilesConfig
from escape.conftest import host_probe, probe_in, run_in

pytestmark = pytest.mark.root


@pytest.fixture
def planted() -> Iterator[list[Path]]:
    """Paths a test creates outside its tmp dir; all removed afterwards."""
    paths: list[Path] = []
    yield paths
    for p in reversed(paths):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _plant(paths: list[Path], path: Path, content: str = "TOP-SECRET\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    paths.append(path)
    return path


@pytest.mark.parametrize("path", ["/etc/shadow", "/etc/gshadow"])
def test_shadow_files_unreadable(sandbox, path: str) -> None:
    sb = sandbox()
    assert probe_in(sb, "read", path).startswith("err")
    assert host_probe("read", path).startswith("ok")


def test_ssh_host_keys_unreadable(sandbox, planted: list[Path]) -> None:
    key = _plant(planted, Path(f"/etc/ssh/ssh_host_corraltest{secrets.token_hex(3)}_key"))
    key.chmod(0o644)  # even a world-readable key must stay hidden
    sb = sandbox()
    assert probe_in(sb, "read", key).startswith("err")
    assert host_probe("read", key, uid=sb.uid).startswith("ok TOP-SECRET")
    assert probe_in(sb, "read", "/etc/hostname").startswith("ok")  # /etc itself is visible


@pytest.mark.parametrize("home", ["/root", "/home"])
def test_host_homes_invisible(sandbox, planted: list[Path], home: str) -> None:
    marker = _plant(planted, Path(home) / f"corral-test-{secrets.token_hex(3)}" / "notes")
    planted.append(marker.parent)
    sb = sandbox()
    assert probe_in(sb, "read", marker).startswith("err")
    assert host_probe("read", marker).startswith("ok TOP-SECRET")


def test_run_invisible(sandbox, planted: list[Path]) -> None:
    marker = _plant(planted, Path(f"/run/corral-test-{secrets.token_hex(3)}"))
    marker.chmod(0o644)
    sb = sandbox()
    for path in (marker, Path("/var/run") / marker.name):
        assert probe_in(sb, "read", path).startswith("err")
    assert host_probe("read", marker, uid=sb.uid).startswith("ok TOP-SECRET")


def test_state_and_config_dirs_hidden_even_under_visible_trees(
    sandbox, planted: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = Path(f"/opt/corral-test-{secrets.token_hex(3)}")
    cfg = Path(f"/etc/corral-test-{secrets.token_hex(3)}")
    planted += [base, cfg]
    monkeypatch.setenv("CORRAL_HOME", str(base / "state"))
    monkeypatch.setenv("CORRAL_CONFIG", str(cfg))
    for p in (_plant(planted, base / "state" / "marker"), _plant(planted, cfg / "policy.yaml"),
              _plant(planted, base / "visible" / "marker", "visible\n")):
        p.chmod(0o644)
        for d in (p.parent, p.parent.parent):
            d.chmod(0o755)
    sb = sandbox()
    assert probe_in(sb, "read", base / "state" / "marker").startswith("err")
    assert probe_in(sb, "read", cfg / "policy.yaml").startswith("err")
    assert probe_in(sb, "read", base / "visible" / "marker") == "ok visible"  # control


def test_files_hide_masks_inside_workspace(sandbox, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "secret").mkdir(parents=True)
    (ws / "secret" / "key").write_text("TOP-SECRET\n")
    (ws / "ok.txt").write_text("fine\n")
    sb = sandbox(workspace=ws, files=FilesConfig(hide=(ws / "secret",)))
    assert probe_in(sb, "read", "/workspace/secret/key").startswith("err")
    assert probe_in(sb, "read", "/workspace/ok.txt") == "ok fine"


def test_files_read_is_read_only(sandbox, planted: list[Path]) -> None:
    ref = _plant(planted, Path(f"/opt/corral-test-{secrets.token_hex(3)}") / "ref.txt", "ref\n")
    planted.append(ref.parent)
    ref.chmod(0o666)  # world-writable on the host: only the sandbox's mounts keep it read-only
    ref.parent.chmod(0o755)
    sb = sandbox(files=FilesConfig(read=(ref.parent,)))
    assert probe_in(sb, "read", ref) == "ok ref"
    assert probe_in(sb, "write", ref).startswith("err")
    assert host_probe("write", ref, uid=sb.uid) == "ok written"  # control, then restore
    ref.write_text("ref\n")


WRITE_DENIED = ["/etc/corral-escape", "/usr/corral-escape", "/corral-escape",
                "/opt/corral-escape", "/var/corral-escape", "/proc/sys/kernel/hostname",
                "/home/corral-escape"]


@pytest.mark.parametrize("target", WRITE_DENIED)
def test_writes_outside_allowed_dirs_fail(sandbox, target: str) -> None:
    sb = sandbox()
    assert probe_in(sb, "write", target).startswith("err")
    assert not os.path.exists(target) or target.startswith("/proc")


@pytest.mark.parametrize("target", ["/workspace/f", "/tmp/f", "/home/corral/f"])
def test_writes_inside_allowed_dirs_work(sandbox, target: str) -> None:
    assert probe_in(sandbox(), "write", target) == "ok written"


def test_symlink_planted_in_workspace_cannot_write_out(sandbox, planted, tmp_path) -> None:
    target = _plant(planted, Path(f"/opt/corral-test-{secrets.token_hex(3)}") / "t", "orig\n")
    planted.append(target.parent)
    target.chmod(0o666)
    target.parent.chmod(0o755)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "link").symlink_to(target)
    (ws / "inner").symlink_to("/workspace/real")
    sb = sandbox(workspace=ws)
    assert probe_in(sb, "write", "/workspace/link").startswith("err")
    assert target.read_text() == "orig\n"
    assert probe_in(sb, "write", "/workspace/inner") == "ok written"  # control: link inside
    # control: on the host the link leads to a file this very uid may write
    assert os.path.realpath(ws / "link") == str(target)
    assert host_probe("write", target, uid=sb.uid) == "ok written"


def test_hardlink_out_of_workspace_refused(sandbox) -> None:
    sb = sandbox()
    code = ("import os,sys\nfor src in sys.argv[1:]:\n"
            "    try:\n        os.link(src, '/workspace/h'+str(abs(hash(src))));print('ok',src)\n"
            "    except OSError as e:\n        print('err',src,e.errno)\n")
    with_tmp = "open('/tmp/mine','w').close();open('/workspace/mine','w').close()"
    run_in(sb, ["/usr/bin/python3", "-c", with_tmp])
    out = run_in(sb, ["/usr/bin/python3", "-c", code, "/etc/hostname", "/usr/bin/env",
                      "/tmp/mine", "/workspace/mine"]).out.splitlines()
    assert [line.split()[0] for line in out] == ["err", "err", "err", "ok"], out


def test_proc_self_root_and_pid1_cwd_stay_inside(sandbox, planted: list[Path]) -> None:
    marker = _plant(planted, Path(f"/root/corral-test-{secrets.token_hex(3)}"))
    sb = sandbox()
    assert probe_in(sb, "read", f"/proc/self/root{marker}").startswith("err")
    assert probe_in(sb, "read", "/proc/self/root/etc/shadow").startswith("err")
    assert probe_in(sb, "read", f"/proc/1/root{marker}").startswith("err")
    assert probe_in(sb, "readlink", "/proc/1/cwd").startswith("err")
    assert probe_in(sb, "readlink", "/proc/self/cwd") == "ok /workspace"  # control
    assert host_probe("read", f"/proc/self/root{marker}").startswith("ok TOP-SECRET")


def test_host_process_environ_invisible(sandbox) -> None:
    secret = f"CORRAL_TEST_SECRET={secrets.token_hex(8)}"
    sb = sandbox()
    host = subprocess.Popen(["setpriv", f"--reuid={sb.uid}", f"--regid={sb.gid}",
                             "--clear-groups", "sleep", "30"], env={secret.split("=")[0]:
                                                                    secret.split("=")[1]})
    try:
        assert probe_in(sb, "environ", secret).startswith("err NOTFOUND")
        assert host_probe("environ", secret, uid=sb.uid).startswith("ok")  # same uid, host
    finally:
        host.kill()
        host.wait()
