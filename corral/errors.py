"""Errors that reach the user as one line and an exit code, never a traceback."""

from __future__ import annotations

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILURE", "CorralError", "UserInputError"]

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


class CorralError(Exception):
    """A failure corral explains itself. ``str(err)`` is the whole message, one line."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UserInputError(CorralError):
    """Bad input from the user: a file, a flag, an argument. Exit 2 (125 under ``run``)."""

    exit_code = EXIT_BAD_INPUT
