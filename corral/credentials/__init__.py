"""Host-side secrets: the root-only store and the sources a policy binding may name.

Public API::

    secrets = resolve_secrets(rp)          # {binding: value | {aws keys}}, in memory only
    CredentialStore().set/get/remove/names
"""

from corral.credentials.bindings import resolve_binding, resolve_secrets
from corral.credentials.sources import SecretError, read_source
from corral.credentials.store import CredentialStore, validate_name

__all__ = ["CredentialStore", "SecretError", "read_source", "resolve_binding", "resolve_secrets",
           "validate_name"]
