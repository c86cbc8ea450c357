"""shared keyring: the keyring document in the database, for replicas on several machines

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'keyring_documents',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('doc', sa.Text(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )


def downgrade() -> None:
    op.drop_table('keyring_documents')
