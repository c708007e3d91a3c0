"""Alembic, driven from code: the migration scripts ship inside the package.

Invariants: the server serves only a schema it knows — the database's revision must be the
head of the scripts shipped with this version (``check_schema``); an unknown revision (a newer
corral migrated it) or an old one is refused with what to do. Only a brand-new SQLite database
is migrated on start (the embedded server needs nothing else); PostgreSQL, shared by replicas
that could race, needs ``corral server migrate``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from corral.errors import CorralError

__all__ = ["SchemaError", "check_schema", "current_revision", "head_revision", "upgrade"]

SCRIPTS = Path(__file__).with_name("migrations")


class SchemaError(CorralError):
    """The database's schema is not the one this server knows."""


def _config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Apply every migration; ``(revision before, revision after)``."""
    before = current_revision(engine)
    command.upgrade(_config(engine), "head")
    return before, head_revision()


def check_schema(engine: Engine, *, auto_migrate_empty_sqlite: bool = True) -> None:
    current = current_revision(engine)
    if current is None and auto_migrate_empty_sqlite and engine.dialect.name == "sqlite" \
            and not inspect(engine).get_table_names():
        upgrade(engine)
        return
    head = head_revision()
    if current == head:
        return
    known = {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}
    if current is None:
        raise SchemaError("the database has no corral schema; run 'corral server migrate'")
    if current not in known:
        raise SchemaError(f"the database's schema revision {current} is unknown to this corral "
                          "(a newer version migrated it); upgrade corral")
    raise SchemaError(f"the database's schema is at revision {current}, this corral needs "
                      f"{head}; run 'corral server migrate'")
