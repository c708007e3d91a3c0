"""approvals: approve always (standing approvals), the scope it covers, the MCP caller

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import corral.server.models.base

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_UTC = corral.server.models.base.UtcDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("always", sa.Boolean(), server_default=sa.false(),
                                      nullable=False))
        batch_op.add_column(sa.Column("scope_digest", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("caller", sa.String(length=320), nullable=True))
    op.create_table(
        "standing_approvals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.Integer(), nullable=True),
        sa.Column("tool", sa.String(length=200), nullable=False),
        sa.Column("scope_digest", sa.String(length=64), nullable=False),
        sa.Column("policy_digest", sa.String(length=64), nullable=False),
        sa.Column("summary", sa.String(length=500), nullable=False),
        sa.Column("approval_id", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=320), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(["agent_id"], ["agents.id"],
                                name=op.f("fk_standing_approvals_agent_id_agents"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"],
                                name=op.f("fk_standing_approvals_project_id_projects"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_standing_approvals")),
    )
    with op.batch_alter_table("standing_approvals", schema=None) as batch_op:
        batch_op.create_index("ix_standing_lookup", ["project_id", "tool", "scope_digest"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("standing_approvals", schema=None) as batch_op:
        batch_op.drop_index("ix_standing_lookup")
    op.drop_table("standing_approvals")
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.drop_column("caller")
        batch_op.drop_column("scope_digest")
        batch_op.drop_column("always")
