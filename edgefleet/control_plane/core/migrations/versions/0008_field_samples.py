"""Field samples from devices, kept per model version for retraining.

A new table: nothing existing changes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 00:30:51.974046
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fieldsample",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("model_version", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("bundle_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("input_name", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("labelled_rows", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=True),
        sa.Column("withheld_rows", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("fieldsample", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fieldsample_event_id"), ["event_id"], unique=True)
        batch_op.create_index(batch_op.f("ix_fieldsample_model"), ["model"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_fieldsample_model_version"), ["model_version"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("fieldsample", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fieldsample_model_version"))
        batch_op.drop_index(batch_op.f("ix_fieldsample_model"))
        batch_op.drop_index(batch_op.f("ix_fieldsample_event_id"))

    op.drop_table("fieldsample")
