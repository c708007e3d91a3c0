"""sso: pending logins, login attempts, a login token's IdP refresh

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import corral.server.models.base

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_UTC = corral.server.models.base.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "login_flows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("expires_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_flows")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_login_flows_key_hash")),
    )
    with op.batch_alter_table("login_flows", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_login_flows_expires_at"), ["expires_at"],
                              unique=False)
    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_attempts")),
    )
    with op.batch_alter_table("login_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_login_attempts_key_at", ["key", "at"], unique=False)
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idp_refresh", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("idp_checked_at", _UTC, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_column("idp_checked_at")
        batch_op.drop_column("idp_refresh")
    with op.batch_alter_table("login_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_login_attempts_key_at")
    op.drop_table("login_attempts")
    with op.batch_alter_table("login_flows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_flows_expires_at"))
    op.drop_table("login_flows")
