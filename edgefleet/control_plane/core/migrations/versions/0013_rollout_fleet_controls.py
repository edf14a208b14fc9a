"""Rollout fleet controls: most devices installing at once, and a bandwidth budget.

Rollouts already in the database have neither (null): their waves are offered whole,
as before. ``budget_spent_until`` is the bandwidth budget's pacing clock.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08 01:19:23.478512
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_concurrent", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("bandwidth_bytes_per_s", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("budget_spent_until", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.drop_column("budget_spent_until")
        batch_op.drop_column("bandwidth_bytes_per_s")
        batch_op.drop_column("max_concurrent")
