"""result instances: which instance drove a series' finding, and how many were screened

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 23:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('instance_uid', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('instances_screened', sa.Integer(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('instances_total', sa.Integer(), nullable=False, server_default='1'))


def downgrade() -> None:
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.drop_column('instances_total')
        batch_op.drop_column('instances_screened')
        batch_op.drop_column('instance_uid')
