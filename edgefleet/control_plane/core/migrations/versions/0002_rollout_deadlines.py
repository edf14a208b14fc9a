"""Rollout deadlines: per-device install and per-wave deadlines, paused clocks.

Rollouts already in the database get the default timeouts (30 min, 2 h).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 22:02:48.819481
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "install_timeout_s", sa.Float(), nullable=False, server_default=sa.text("1800.0")
            )
        )
        batch_op.add_column(
            sa.Column(
                "wave_timeout_s", sa.Float(), nullable=False, server_default=sa.text("7200.0")
            )
        )
        batch_op.add_column(
            sa.Column("wave_deadline_at", sa.DateTime(timezone=True), nullable=True)
        )

    with op.batch_alter_table("rolloutdevice", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("wave_deadline_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("timed_out_in", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("late_state", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("rolloutdevice", schema=None) as batch_op:
        batch_op.drop_column("late_state")
        batch_op.drop_column("timed_out_in")
        batch_op.drop_column("wave_deadline_at")
        batch_op.drop_column("paused_at")
        batch_op.drop_column("deadline_at")

    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.drop_column("wave_deadline_at")
        batch_op.drop_column("wave_timeout_s")
        batch_op.drop_column("install_timeout_s")
