"""Fleet-wide atomic switch (the rollout's option and signed order, each device's switch
time) and maintenance windows stored with device groups.

Rows already in the database get nulls: rollouts are not atomic, groups have no window.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08 01:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.add_column(sa.Column("atomic", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("switch_order", sa.JSON(), nullable=True))
    with op.batch_alter_table("rolloutdevice", schema=None) as batch_op:
        batch_op.add_column(sa.Column("switched_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("switch_late_s", sa.Float(), nullable=True))
    with op.batch_alter_table("devicegroup", schema=None) as batch_op:
        batch_op.add_column(sa.Column("maintenance_window", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devicegroup", schema=None) as batch_op:
        batch_op.drop_column("maintenance_window")
    with op.batch_alter_table("rolloutdevice", schema=None) as batch_op:
        batch_op.drop_column("switch_late_s")
        batch_op.drop_column("switched_at")
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.drop_column("switch_order")
        batch_op.drop_column("atomic")
