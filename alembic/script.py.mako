"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""

from alembic import op

from flowmesh import migrations

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade() -> None:
    migrations.execute_sql_file(op.get_bind().connection.driver_connection, revision)


def downgrade() -> None:
    raise NotImplementedError("FlowMesh migrations are forward-only")
