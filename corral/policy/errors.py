"""``PolicyError``: bad policy input or a composition conflict, reported one problem a line."""

from __future__ import annotations

from corral.errors import UserInputError

__all__ = ["PolicyError"]


class PolicyError(UserInputError):
    """``problems`` holds every problem found, each one line starting with ``file:line``.

    ``str(err)`` is the first problem (plus a count of the rest), so a caller that prints one
    line still names a file, a line and a fix; ``policy check`` prints them all.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems) or ["invalid policy"]
        more = len(self.problems) - 1
        head = self.problems[0] + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")
        super().__init__(head)
