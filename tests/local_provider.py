"""Test helper: the executor as a plain local subprocess, to test the protocol without a sandbox.

Not a conftest.py: a second module named conftest would shadow tests/conftest.py.
The end-to-end tests in tests/mcp run the same executor through the real ``Sandbox``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

from corral.tools.executor_client import Executor, executor_argv


class LocalProvider:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.stops = 0

    def start(self) -> Executor:
        self.proc = subprocess.Popen(executor_argv(str(self.root)), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        return Executor(self.proc.stdin, self.proc.stdout, process=self.proc)

    def stop(self) -> None:
        self.stops += 1
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def local_provider(tmp_path: Path) -> Iterator[LocalProvider]:
    root = tmp_path / "ws"
    root.mkdir()
    prov = LocalProvider(root)
    yield prov
    prov.stop()
