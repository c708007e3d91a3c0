"""Resource caps end to end: a hostile agent cannot exhaust the host through corral's helpers.

The disk floor (``corral.sandbox.diskspace``), the proxy's connection and buffer caps and its
cgroup (``corral.proxy.server``, ``corral.runtime.egress``), the audit budget
(``corral.audit.budget``). Each test has a control showing the cap, not the workload, stopped it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.root


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs mounted for the test (unmounted after, also on failure)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_refuses_to_start_with_one_line_125(corral, small_fs: Path) -> None:
    home = small_fs / "state"
    done = corral("--", "/bin/true", env={"CORRAL_HOME": str(home)})
    assert done.returncode == 125, done
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    assert "not enough free disk space for the state dir" in lines[0]
    assert "CORRAL_MIN_FREE" in lines[0]
    # control: the same filesystem with a floor it meets
    ok = corral("--", "/bin/true", env={"CORRAL_HOME": str(home), "CORRAL_MIN_FREE": "16MiB"})
    assert ok.returncode == 0, ok


@pytest.mark.parametrize("value, expected", [
    (None, (1024**3, 5.0)), ("1GiB,5%", (1024**3, 5.0)), ("512MiB", (512 * 1024**2, 0.0)),
    ("2%", (0, 2.0)), ("0", (0, 0.0)), (" 2GiB , 10% ", (2 * 1024**3, 10.0)),
])
def test_min_free_setting(value: str | None, expected: tuple[int, float],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.sandbox.diskspace import ENV, floors

    if value is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, value)
    assert floors() == expected


@pytest.mark.parametrize("bad", ["lots", "5%%", "120%", "-1GiB", "1GB"])
def test_min_free_setting_malformed_fails_closed(bad: str) -> None:
    from corral.errors import CorralError
    from corral.sandbox.diskspace import floors

    with pytest.raises(CorralError) as err:
        floors(bad)
    assert err.value.exit_code == 125
