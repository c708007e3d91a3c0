"""The relay of ``action: platform``: requests a launcher's proxy streams to the server, which
injects the project's credential and carries them upstream (``app``; protocol in
``corral.proxy.relay_wire``, docs/server.md "The relay")."""

from corral.server.relay.app import RelayMiddleware

__all__ = ["RelayMiddleware"]
