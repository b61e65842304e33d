"""lost workers: jobs count the workers lost under them; evaluations remember when they
were last sent to the workers (so the reconciler can send a lost one again)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("workers_lost", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("enqueued_at", sa.Float(), nullable=True))
        batch.add_column(
            sa.Column("workers_lost", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("workers_lost")
        batch.drop_column("enqueued_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("workers_lost")
