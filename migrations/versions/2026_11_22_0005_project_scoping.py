"""project scoping: project_id on files, jobs, fine-tuned models, deployments, evaluations

Existing rows belong to the "default" project (the one open mode uses), created here when
there are rows to give it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 14:40:00
"""

import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.ids import new_id

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("files", "jobs", "fine_tuned_models", "deployments", "evaluations")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("project_id", sa.String(length=64), nullable=True))
            batch.create_index(f"ix_{table}_project_id", ["project_id"], unique=False)
    conn = op.get_bind()
    if not any(conn.execute(sa.text(f"SELECT 1 FROM {table} LIMIT 1")).first() for table in TABLES):
        return
    project = conn.execute(sa.text("SELECT id FROM projects WHERE name = 'default'")).scalar()
    if project is None:
        project = new_id("proj")
        conn.execute(
            sa.text("INSERT INTO projects (id, name, created_at) VALUES (:id, 'default', :now)"),
            {"id": project, "now": int(time.time())},
        )
    for table in TABLES:
        conn.execute(
            sa.text(f"UPDATE {table} SET project_id = :project WHERE project_id IS NULL"),
            {"project": project},
        )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_project_id")
            batch.drop_column("project_id")
