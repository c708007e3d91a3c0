"""Secret sources: ``store:NAME`` (or a bare name), ``env:VAR``, ``file:PATH``, ``cmd:COMMAND``.

Invariants:
- ``env:``, ``file:`` and ``cmd:`` are honoured only for bindings whose policy lives in the
  config dir (``trusted_source``); the loader refuses them elsewhere and this module checks
  again, so a repo's policy can never make root read a file or run a command.
- Values stay in memory; errors name the binding and source but never include a value or a
  command's output.
- ``cmd:`` runs through ``/bin/sh -c`` (the shell parses it, not corral), with a timeout; its
  stdout minus one trailing newline is the secret.
"""

from __future__ import annotations

import os
import subprocess

from corral.credentials.store import CredentialStore
from corral.errors import CorralError

__all__ = ["CMD_TIMEOUT", "SecretError", "read_source"]

CMD_TIMEOUT = 30.0


class SecretError(CorralError):
    pass


def _strip_newline(value: str) -> str:
    return value[:-1] if value.endswith("\n") else value


def read_source(spec: str, *, trusted: bool, store: CredentialStore | None = None) -> str:
    kind, sep, arg = spec.partition(":")
    if not sep:
        kind, arg = "store", spec
    if kind in ("env", "file", "cmd") and not trusted:
        raise SecretError(
            f"source '{kind}:' is only allowed in policies in corral's config dir; "
            "use store:NAME and `corral creds set NAME`"
        )
    if kind == "store":
        value = (store or CredentialStore()).get(arg)
        if value is None:
            raise SecretError(f"no stored secret {arg!r}; set it with `corral creds set {arg}`")
        return value
    if kind == "env":
        value = os.environ.get(arg)
        if value is None:
            raise SecretError(f"environment variable {arg} is not set")
        return value
    if kind == "file":
        return _read_file(arg)
    if kind == "cmd":
        return _run_command(arg)
    raise SecretError(f"unknown secret source {kind!r} (use store:, env:, file: or cmd:)")


def _read_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return _strip_newline(fh.read())
    except OSError as err:
        raise SecretError(f"cannot read secret file {path}: {err.strerror}") from None


def _run_command(command: str) -> str:
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=CMD_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise SecretError(f"secret command timed out after {CMD_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        raise SecretError(f"secret command exited with status {done.returncode}")
    value = _strip_newline(done.stdout)
    if not value:
        raise SecretError("secret command printed nothing")
    return value
