"""A pseudo-terminal corral owns, for interactive agents.

Why: if the agent got the user's terminal it could push keystrokes into the user's shell with
``TIOCSTI`` or reconfigure it. With this pty the agent's controlling terminal is ours; we copy
bytes between it and the user's terminal, which we put in raw mode (so ^C, colours and escape
sequences reach the agent unchanged) and always restore on exit. Window size changes
(``SIGWINCH``) are copied to the pty, which signals the agent's foreground process group.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import termios
import tty
from typing import Any

__all__ = ["Pty"]


class Pty:
    def __init__(self, user_fd: int = 0) -> None:
        self.user_fd = user_fd
        self.master, self.slave = os.openpty()
        os.set_blocking(self.master, False)
        self._saved: list[Any] | None = None
        self.resize()

    def resize(self) -> None:
        """Copy the user's terminal size to the pty (the kernel then sends SIGWINCH inside)."""
        with contextlib.suppress(OSError):
            size = fcntl.ioctl(self.user_fd, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)

    def raw(self) -> None:
        with contextlib.suppress(termios.error):
            self._saved = termios.tcgetattr(self.user_fd)
            tty.setraw(self.user_fd, termios.TCSANOW)

    def restore(self) -> None:
        if self._saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self.user_fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def close_slave(self) -> None:
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1

    def close(self) -> None:
        self.restore()
        self.close_slave()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
