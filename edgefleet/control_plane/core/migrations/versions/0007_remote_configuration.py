"""Remote configuration: what each scope desires, and per device what was sent and
what the device reported. New tables only: every existing row stays as it was.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 00:31:37.025244
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "config_scope",
        sa.Column("scope", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.PrimaryKeyConstraint("scope", "name"),
    )
    with op.batch_alter_table("config_scope", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_config_scope_version"), ["version"], unique=False)

    op.create_table(
        "device_config",
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("desired_version", sa.Integer(), nullable=False),
        sa.Column("desired", sa.JSON(), nullable=True),
        sa.Column("sources", sa.JSON(), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reported_version", sa.Integer(), nullable=True),
        sa.Column("applied_version", sa.Integer(), nullable=True),
        sa.Column("applied", sa.JSON(), nullable=True),
        sa.Column("refused", sa.JSON(), nullable=True),
        sa.Column("pending_restart", sa.JSON(), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("device_id"),
    )


def downgrade() -> None:
    op.drop_table("device_config")
    with op.batch_alter_table("config_scope", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_config_scope_version"))

    op.drop_table("config_scope")
