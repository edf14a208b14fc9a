"""A rollout's maintenance window: the devices switch only while it is open.

Rollouts already in the database have none (null): they switch as before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 22:24:39.034900
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.add_column(sa.Column("maintenance_window", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.drop_column("maintenance_window")
