"""Units of ``limits``: sizes (B, KiB, MiB, GiB, TiB) and durations (s, m, h); ``none`` is
unlimited and parses to ``None``. Plain numbers are bytes / seconds. Errors are one-line hints.
"""

from __future__ import annotations

import re

__all__ = ["parse_duration", "parse_size"]

_SIZE = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_TIME = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")


def parse_size(value: int | str) -> int | None:
    if isinstance(value, bool):
        raise ValueError("a size like 512MiB or 4GiB, or 'none'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("a size must be positive")
        return value
    if value == "none":
        return None
    match = _NUMBER.fullmatch(value.strip())
    if not match or match.group(2).lower() not in _SIZE:
        raise ValueError(f"bad size {value!r}: use KiB, MiB or GiB, e.g. '4GiB', or 'none'")
    size = int(float(match.group(1)) * _SIZE[match.group(2).lower()])
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


def parse_duration(value: int | str) -> float | None:
    if isinstance(value, bool):
        raise ValueError("a duration like 30m or 2h, or 'none'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("a duration must be positive")
        return float(value)
    if value == "none":
        return None
    match = _NUMBER.fullmatch(value.strip())
    if not match or match.group(2) not in _TIME:
        raise ValueError(f"bad duration {value!r}: use s, m or h, e.g. '30m', or 'none'")
    seconds = float(match.group(1)) * _TIME[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds
