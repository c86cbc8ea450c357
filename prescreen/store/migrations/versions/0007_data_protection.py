"""data protection: patient columns and TOTP secrets hold SM4-GCM envelopes (text), report signatures carry their SM2
signature and the exact bytes signed, physicians' SM2 keys

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.alter_column('patient_id', type_=sa.Text(), existing_type=sa.String(length=64), existing_nullable=True)
        batch_op.alter_column(
            'patient_name', type_=sa.Text(), existing_type=sa.String(length=128), existing_nullable=True
        )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.alter_column('totp_secret', type_=sa.Text(), existing_type=sa.String(length=64), existing_nullable=True)
    with op.batch_alter_table('signatures', schema=None) as batch_op:
        batch_op.add_column(sa.Column('canonical', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('sm2_signature', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('key_id', sa.String(length=16), nullable=True))
    op.create_table(
        'signing_keys',
        sa.Column('user_id', sa.String(length=32), sa.ForeignKey('users.id', ondelete='CASCADE'), primary_key=True),
        sa.Column('key_id', sa.String(length=16), nullable=False),
        sa.Column('public_pem', sa.Text(), nullable=False),
        sa.Column('sealed_private', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('signing_keys')
    with op.batch_alter_table('signatures', schema=None) as batch_op:
        batch_op.drop_column('key_id')
        batch_op.drop_column('sm2_signature')
        batch_op.drop_column('canonical')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.alter_column('totp_secret', type_=sa.String(length=64), existing_type=sa.Text())
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.alter_column('patient_name', type_=sa.String(length=128), existing_type=sa.Text())
        batch_op.alter_column('patient_id', type_=sa.String(length=64), existing_type=sa.Text())
