"""A private network namespace per sandbox, made and entered from helper threads.

Python 3.11 has no ``os.setns``; ``_libc`` provides it. A thread that ``unshare(CLONE_NEWNET)``s
moves only itself, so the launcher's other threads stay in the host namespace; processes it forks
(``ip``, ``nft``) start inside. The namespace lives as long as ``NetNamespace.fd`` or a process
in it does — it needs no name under /run/netns, so a killed launcher leaves nothing behind.

Layout inside: ``lo`` up; a veth pair ``c0``/``c1`` (both ends inside) carrying
``10.255.255.2/30`` and ``fd00:c0:ffff::2/64`` with default routes for both families, so a
connection to any outside address is routed and reaches the netfilter rules (which reject it)
instead of failing early with "network unreachable".
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from corral.sandbox import _libc
from corral.sandbox.netfilter import ruleset

__all__ = ["NetNamespace", "Pending", "in_thread"]

T = TypeVar("T")

_IP_BATCH = b"""link set lo up
link add c0 type veth peer name c1
link set c1 up
link set c0 up
address add 10.255.255.2/30 dev c0
address add fd00:c0:ffff::2/64 dev c0 nodad
route add 0.0.0.0/0 dev c0
route add ::/0 dev c0
"""


class Pending(Generic[T]):
    """``fn`` running on its own thread; ``result()`` joins it and returns or raises."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._box: dict[str, object] = {}
        self._thread = threading.Thread(target=self._body, args=(fn,), name="corral-netns")
        self._thread.start()

    def _body(self, fn: Callable[[], T]) -> None:
        try:
            self._box["ok"] = fn()
        except BaseException as err:
            self._box["err"] = err

    def result(self) -> T:
        self._thread.join()
        if "err" in self._box:
            raise self._box["err"]  # type: ignore[misc]
        return self._box["ok"]  # type: ignore[return-value]


def in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread and return its result (or raise its exception)."""
    return Pending(fn).result()


def _run(argv: list[str], data: bytes, what: str) -> None:
    done = subprocess.run(argv, input=data, capture_output=True, check=False)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise OSError(f"{what} failed: {detail[0] if detail else done.returncode}")


class NetNamespace:
    """A configured sandbox netns. ``fd`` is an open ``/proc/.../ns/net`` descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def create(
        cls, uid: int, proxy_port: int | None, dns_port: int | None, *, ip: str = "ip",
        nft: str = "nft", log_group: int | None = None
    ) -> NetNamespace:
        return cls.start(uid, proxy_port, dns_port, ip=ip, nft=nft, log_group=log_group).result()

    @classmethod
    def start(
        cls, uid: int, proxy_port: int | None, dns_port: int | None, *, ip: str = "ip",
        nft: str = "nft", log_group: int | None = None
    ) -> Pending[NetNamespace]:
        """Build the namespace in the background (the launcher does other setup meanwhile)."""
        def build() -> int:
            _libc.unshare(_libc.CLONE_NEWNET)
            fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _run([ip, "-batch", "-"], _IP_BATCH, "network setup (ip)")
                rules = ruleset(uid, proxy_port, dns_port, log_group)
                _run([nft, "-f", "-"], rules.encode(), "nft")
            except BaseException:
                os.close(fd)
                raise
            return fd

        return Pending(lambda: cls(build()))

    def run_in(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a helper thread inside this namespace (e.g. to bind a listener)."""

        def entered() -> T:
            _libc.setns(self.fd, _libc.CLONE_NEWNET)
            return fn()

        return in_thread(entered)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
