"""spend: settled_at, expired_at and flagged on spend rows; indexes for budget windows

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("spend", schema=None) as batch_op:
        batch_op.add_column(sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("flagged", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.create_index("ix_spend_at", ["at"], unique=False)
        batch_op.create_index("ix_spend_state_renewed", ["state", "renewed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("spend", schema=None) as batch_op:
        batch_op.drop_index("ix_spend_state_renewed")
        batch_op.drop_index("ix_spend_at")
        batch_op.drop_column("flagged")
        batch_op.drop_column("expired_at")
        batch_op.drop_column("settled_at")
