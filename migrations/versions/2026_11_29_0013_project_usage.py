"""project usage: requests and tokens served for each project, through its deployments and
its direct model calls (/v1/predict, chat and completions), flushed from the API's in-memory
counts like the deployments' (app/deployments/usage.py). Existing projects start from the sum
of their deployments' counts, the only usage counted before.

Revision ID: 0013
Revises: 0007
Create Date: 2026-11-29 19:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("requests_served", "prompt_tokens", "completion_tokens")


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
    for name in COLUMNS:
        op.execute(
            f"UPDATE projects SET {name} = COALESCE((SELECT SUM(d.{name}) FROM deployments d "
            f"WHERE d.project_id = projects.id), 0)"
        )


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
