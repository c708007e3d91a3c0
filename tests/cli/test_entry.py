"""``python -m corral`` (``corral/__main__.py``) is the same command as the ``corral`` script."""

from __future__ import annotations

import subprocess
import sys


def test_help_lists_run() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "corral", "--help"], capture_output=True, text=True, check=True
    )
    assert "run" in out.stdout
